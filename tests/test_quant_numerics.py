"""Quantization arithmetic: 7B-shape layer precision, rounding/clamping rules, skip lists, and the Triton kernels
through Triton's CPU interpreter."""

from __future__ import annotations

import textwrap

import pytest
import torch

from inference.errors import UserError
from inference.layers.linear import ColumnParallelLinear, RowParallelLinear
from inference.quant import utils
from inference.quant.apply import linear_targets, quantize_layer
from inference.quant.calibrate import smooth_group
from inference.quant.methods import W8A8LinearMethod, W8A16LinearMethod
from inference.quant.quantize import quantized_modules
from tests.support.interpreter import run_interpreted


def row_cosine_min(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float(((y * ref).sum(-1) / (y.norm(dim=-1) * ref.norm(dim=-1))).min())


def activations(tokens: int, k: int, g: torch.Generator) -> torch.Tensor:
    """LLM-like inputs: Gaussian channels plus a few outlier channels 30x larger."""
    x = torch.randn(tokens, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:6]] *= 30
    return x


@pytest.fixture(scope="module")
def layers_7b():
    """attn.c_proj [4096 x 4096] (row-parallel) and an MLP up projection [11008 x 4096]: float32 weights, their
    int8 copies, and LLM-like inputs."""
    g = torch.Generator().manual_seed(0)
    out = []
    for lin in (RowParallelLinear(4096, 4096), ColumnParallelLinear(4096, 11008)):
        w = torch.randn(lin.weight.shape, generator=g) * 0.02
        lin.weight.data.copy_(w)
        quantize_layer(lin, "w8a16")
        out.append((w, lin))
    return out, activations(8, 4096, g)


@pytest.mark.parametrize("scheme, floor", [("w8a16", 0.999), ("w8a8", 0.99)])
def test_7b_shape_layer_output_cosine(layers_7b, scheme, floor):
    lins, x = layers_7b
    for w, lin in lins:
        lin.quant_method = W8A16LinearMethod() if scheme == "w8a16" else W8A8LinearMethod()
        assert lin.weight.dtype == torch.int8
        cos = row_cosine_min(lin(x), x @ w.t())
        assert floor <= cos < 1.0, (scheme, tuple(w.shape), cos)


def test_static_w8a8_needs_smoothing_with_outliers(layers_7b):
    """One per-tensor scale over outlier channels crushes the others; SmoothQuant migrates them to the weights."""
    (w, _), _ = layers_7b[0]
    x = layers_7b[1]
    ref = x @ w.t()
    cos = {}
    for alpha in (0.0, 0.5):
        amax = x.abs().amax(0)
        s = smooth_group(amax, [w], torch.ones(4096), alpha)[1] if alpha else torch.ones(4096)
        lin = RowParallelLinear(4096, 4096)
        lin.weight.data.copy_(w * s[None, :])
        quantize_layer(lin, "w8a8")
        lin.quant_method = W8A8LinearMethod(static=True)
        lin.input_scale = torch.nn.Parameter(torch.tensor([float((amax / s).max()) / 127]), requires_grad=False)
        cos[alpha] = row_cosine_min(lin(x / s), ref)
    assert cos[0.5] >= 0.99 and (1 - cos[0.5]) < (1 - cos[0.0]) / 5, cos  # error shrinks 5x or more


def test_weight_quantization_rules():
    w = torch.randn(64, 96)
    w[3] = 0.0
    q, s = utils.quantize_weight(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (64,)
    assert q.abs().max() <= 127 and (q.abs().amax(1)[torch.arange(64) != 3] == 127).all()
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()
    assert s[3] == 1.0 and (q[3] == 0).all()


def test_activation_quantization_rules():
    x = torch.tensor([[0.5, 1.5, 2.5, -2.5, 127.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q, s = utils.quantize_per_token(x)
    assert s.tolist() == [1.0, 1.0] and q[0].tolist() == [0, 2, 2, -2, 127]  # ties to even
    q = utils.quantize_static(torch.tensor([[1000.0, -1000.0, 3.0]]), torch.tensor([2.0]))
    assert q.tolist() == [[127, -127, 2]]
    q = utils.quantize_static(torch.tensor([[1000.0, -1000.0, 3.0]]), torch.tensor([2.0]), torch.tensor([10.0]))
    assert q.tolist() == [[127, -128, 12]]
    a, b = torch.randint(-128, 128, (5, 64), dtype=torch.int8), torch.randint(-128, 128, (7, 64), dtype=torch.int8)
    assert torch.equal(utils.int8_matmul(a, b), a.long().mm(b.long().t()).int())


def test_skip_lists(tiny_model):
    from inference.config import ModelConfig

    cfg = ModelConfig.from_dir(tiny_model)
    assert utils.is_skipped("transformer.h.3.mlp.c_proj", ("mlp.c_proj",))
    assert not utils.is_skipped("transformer.h.3.attn.c_proj", ("mlp.c_proj",))
    assert utils.is_skipped("transformer.h.1.attn.c_attn", ("transformer.h.1.*",))
    assert utils.parse_skip(None, "w8a8") == ("mlp.c_proj",) and utils.parse_skip("none", "w8a8") == ()
    assert len(quantized_modules(cfg, ())) == 10 and len(quantized_modules(cfg, ("mlp.c_proj",))) == 8
    with pytest.raises(UserError, match="fused"):
        quantized_modules(cfg, ("mlp.w1",))
    with pytest.raises(UserError, match="not a module pattern"):
        utils.parse_skip("mlp c_proj;rm", "w8a8")
    with pytest.raises(UserError, match="unknown quantization scheme"):
        utils.check_scheme("int4")
    from inference.models.qwen import QWenLMHeadModel

    model = QWenLMHeadModel(cfg)
    names = [n for n, _ in linear_targets(model, ("transformer.h.0.*",))]
    assert names == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.w2_w1",
                     "transformer.h.1.mlp.c_proj"]


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from inference.quant import ops as K, utils as U
    from inference.quant.methods import w8a16_reference, w8a8_reference
    torch.manual_seed(0)
    for m, n, k in ((1, 96, 256), (3, 80, 1024), (40, 72, 200), (600, 64, 128)):
        x = torch.randn(m, k).half()
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        s, b = torch.rand(n) * 1e-3, torch.randn(n).half()
        y, r = K.w8a16_linear(x, w, s, b), w8a16_reference(x, w, s, b)
        assert (y.float() - r.float()).norm() / r.float().norm() < 2e-3, (m, n, k)
        q, xs = U.quantize_per_token(x)
        if m < 100:  # (the interpreter runs one program per row: slow)
            q2, xs2 = K.quantize_per_token(x)
            assert torch.equal(q, q2) and torch.equal(xs, xs2)
        sc, off = torch.tensor([0.02]), torch.tensor([3.0])
        assert torch.equal(K.quantize_static(x, sc, off), U.quantize_static(x, sc, off))
        qb = torch.randint(-999, 999, (n,), dtype=torch.int32)
        y, r = K.int8_linear(q, w, xs, s, qb, b, torch.float16), w8a8_reference(q, w, xs, s, qb, b, torch.float16)
        assert (y.float() - r.float()).norm() / r.float().norm() < 2e-3, (m, n, k)
    # one token, gated (silu(gate) * up of [gate; up]) and not, K a multiple of the word tile (even) or not
    for n, k, tile in ((24, 2048, ("words", 8, 128, 4, 2)), (20, 1000, ("words", 4, 64, 4, 2))):
        x = torch.randn(1, k).half()
        w = torch.randint(-127, 128, (2 * n, k), dtype=torch.int8)
        s, qb = torch.rand(2 * n) * 1e-3, torch.randint(-999, 999, (2 * n,), dtype=torch.int32)
        r = w8a16_reference(x, w, s).float()
        y = K.w8a16_gemv(x, w, s, gated=True, config=tile)
        ref = ref16 = torch.nn.functional.silu(r[:, :n]) * r[:, n:]
        assert y.shape == (1, n) and (y.float() - ref).norm() / ref.norm() < 2e-3, (n, k)
        q, xs = U.quantize_per_token(x)
        r8 = w8a8_reference(q, w, xs, s, qb, None, torch.float32)
        y = K.w8a8_gemv(q, w, xs, s, qb, None, torch.float16, gated=True, config=tile)
        ref = torch.nn.functional.silu(r8[:, :n]) * r8[:, n:]
        assert (y.float() - ref).norm() / ref.norm() < 2e-3, (n, k)
        y = K.w8a16_gemv(x, w, s, gated=True, config=("bytes", 4, 256, 4, 2))
        assert (y.float() - ref16).norm() / ref16.norm() < 2e-3, (n, k)
        for kind, bk in (("words", tile[2]), ("bytes", 512)):  # plain, each GEMV
            y, r = K.w8a16_gemv(x, w, s, config=(kind, tile[1], bk, 4, 2)), w8a16_reference(x, w, s)
            assert (y.float() - r.float()).norm() / r.float().norm() < 2e-3, (n, k, kind)
        exact = K.w8a8_gemv(q, w, xs, s, qb, None, torch.float32, config=tile)  # int32 sums: the reference's
        assert torch.equal(exact, r8), (n, k)
    print("kernels ok")
""")


def test_triton_kernels_match_reference_in_the_interpreter():
    """The kernels' logic (tiling, masks, split-K, epilogues) on the CPU; the GPU tests cover bf16 and speed."""
    run_interpreted(KERNEL_CHECK, "kernels ok", timeout=120)
