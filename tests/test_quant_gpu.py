"""Triton int8 kernels against the CPU reference path (CUDA only; skipped without a GPU).

Run on a GPU machine: python -m pytest -q tests/test_quant_gpu.py (about 2 minutes on an H100, mostly the
CPU references and first compiles).
"""

from __future__ import annotations

import pytest
import torch

from inference.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from inference.quant import utils
from inference.quant.apply import quantize_layer
from inference.quant.methods import w8a8_reference, w8a16_reference

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}  # relative L2 error: output rounding only


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double().cpu(), ref.double().cpu()
    assert torch.isfinite(y).all()
    return float((y - ref).norm() / ref.norm())


def rand_case(m, n, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g) * k ** -0.5
    q, s = utils.quantize_weight(w)
    b = (torch.randn(n, generator=g) * 0.1).to(dtype)
    return x, q, s, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 16, 33, 64, 257, 600])  # gemv, skinny (split K), swap, dequant
@pytest.mark.parametrize("n, k", [(4096, 4096), (384, 200), (4096, 11008)])
def test_w8a16_kernel_matches_reference(m, n, k, dtype):
    from inference.quant import ops as kernels

    x, q, s, b = rand_case(m, n, k, dtype, seed=m * 7 + n)
    for bias in (b, None):
        ref = w8a16_reference(x, q, s, bias)
        y = kernels.w8a16_linear(x.cuda(), q.cuda(), s.cuda(), None if bias is None else bias.cuda())
        assert y.dtype == dtype and y.shape == (m, n)
        assert rel_err(y, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k", [(1, 4096), (5, 11008), (64, 4096), (300, 200)])
def test_activation_quant_kernels_are_exact(m, k, dtype):
    from inference.quant import ops as kernels

    x = (torch.randn(m, k) * 3).to(dtype)
    x[0, :7] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 127.4, 300.0])  # ties and clamping
    q, s = kernels.quantize_per_token(x.cuda())
    q_ref, s_ref = utils.quantize_per_token(x)
    assert torch.equal(s.cpu(), s_ref) and torch.equal(q.cpu(), q_ref)
    given = torch.full((m,), 0.5)
    assert torch.equal(kernels.quantize_per_token(x.cuda(), given.cuda())[0].cpu(),
                       utils.quantize_per_token(x, given)[0])
    scale, off = torch.tensor([0.5]), torch.tensor([3.0])
    assert torch.equal(kernels.quantize_static(x.cuda(), scale.cuda()).cpu(), utils.quantize_static(x, scale))
    assert torch.equal(kernels.quantize_static(x.cuda(), scale.cuda(), off.cuda()).cpu(),
                       utils.quantize_static(x, scale, off))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 17, 64, 200, 600])
@pytest.mark.parametrize("n, k", [(4096, 4096), (22016, 4096), (384, 256)])
def test_int8_gemm_matches_reference(m, n, k, dtype):
    from inference.quant import ops as kernels

    x, q, s, b = rand_case(m, n, k, dtype, seed=m + n)
    xq, xs = utils.quantize_per_token(x)
    qb = torch.randint(-5000, 5000, (n,), dtype=torch.int32)
    for row_scale, quant_bias, bias in ((xs, None, b), (torch.tensor([0.03]), qb, None)):
        ref = w8a8_reference(xq, q, row_scale, s, quant_bias, bias, dtype)
        y = kernels.int8_linear(xq.cuda(), q.cuda(), row_scale.cuda(), s.cuda(),
                                None if quant_bias is None else quant_bias.cuda(),
                                None if bias is None else bias.cuda(), dtype)
        assert y.dtype == dtype and rel_err(y, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 16, 33, 64])
@pytest.mark.parametrize("tma", [False, None])  # None: the TMA tiles where the GPU has them (k = 1100 has not)
@pytest.mark.parametrize("n, k", [(4096, 4096), (11008, 4096), (200, 1100)])
def test_w8a16_skinny_gated(m, n, k, tma, dtype):
    """decode_ops.w8a16_skinny, the gated form (silu(gate) * up of [gate; up]) that W8A16 apply_gated runs."""
    from inference.quant import decode_ops

    x, q, s, _ = rand_case(m, 2 * n, k, dtype, seed=m + n + k)
    ref = w8a16_reference(x, q, s).float()
    ref = torch.nn.functional.silu(ref[:, :n]) * ref[:, n:]
    y = decode_ops.w8a16_skinny(x.cuda(), q.cuda(), s.cuda(), gated=True, tma=tma)
    assert y.shape == (m, n) and rel_err(y, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(4096, 4096), (11008, 4096), (4096, 11008), (200, 1100), (96, 250)])
def test_one_token_gemvs(n, k, dtype):
    """The one-token GEMVs (`ops.w8a16_gemv`: words and bytes, plain and gated; `ops.w8a8_gemv`) against the
    CPU reference; W8A8's int32 sums equal the tensor-core GEMM's bit for bit."""
    from inference.quant import ops

    x, q, s, b = rand_case(1, 2 * n, k, dtype, seed=n + k)
    ref = w8a16_reference(x, q, s).float()
    gated_ref = torch.nn.functional.silu(ref[:, :n]) * ref[:, n:]
    xc, qc, sc = x.cuda(), q.cuda(), s.cuda()
    kinds = [None, ("bytes", 2, 1024, 4, 3)] + ([("words", 8, 128, 4, 3)] if k % 4 == 0 else [])
    for cfg in kinds:
        assert rel_err(ops.w8a16_gemv(xc, qc, sc, b.cuda(), config=cfg), w8a16_reference(x, q, s, b)) < TOL[dtype]
        assert rel_err(ops.w8a16_gemv(xc, qc, sc, gated=True, config=cfg), gated_ref) < TOL[dtype]
    if k % 4:
        return
    xq, xs = utils.quantize_per_token(x)
    qb = torch.randint(-5000, 5000, (2 * n,), dtype=torch.int32)
    ref8 = w8a8_reference(xq, q, xs, s, qb, None, torch.float32)
    args = xq.cuda(), qc, xs.cuda(), sc, qb.cuda()
    y = ops.w8a8_gemv(*args, None, torch.float32)
    assert torch.equal(y, ops.int8_linear(*args, None, torch.float32, config=ops.int8_config(1, 2 * n)))
    assert rel_err(y, ref8) < 1e-6
    gated = ops.w8a8_gemv(*args, None, dtype, gated=True)
    assert rel_err(gated, torch.nn.functional.silu(ref8[:, :n]) * ref8[:, n:]) < TOL[dtype]


@pytest.mark.parametrize("n, k", [(4096, 4096), (11008, 4096), (200, 1100), (96, 252)])
def test_l2_prefetch_changes_no_result(n, k, monkeypatch):
    """W8A8's kernels ask L2 for weight lines before the PDL wait (`fused.l2_prefetch`): their results stay bit
    for bit those without it, also where the lines asked for run past short rows."""
    from inference.quant import ops

    x, q, s, b = rand_case(16, 2 * n, k, torch.float16, seed=n + k)
    xq, xs = utils.quantize_per_token(x)
    xq, xs, q, s, b = xq.cuda(), xs.cuda(), q.cuda(), s.cuda(), b.cuda()
    runs = [lambda: ops.w8a8_gemv(xq[:1], q, xs[:1], s, None, b),
            lambda: ops.w8a8_gemv(xq[:1], q, xs[:1], s, gated=True),
            lambda: ops.int8_linear(xq, q, xs, s, None, b)]
    results = {}
    for lines in (0, 32):
        monkeypatch.setattr(ops, "W8A8_PREFETCH", lines)
        results[lines] = [run() for run in runs]
    for y0, y32 in zip(results[0], results[32]):
        assert torch.equal(y0, y32)


def make_layers(device, dtype, values_dtype):
    """The four linears of a block; weights rounded to `values_dtype` so CPU float32 and GPU copies agree."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            layers = [QKVParallelLinear(256, bias=True), RowParallelLinear(256, 256),
                      MergedColumnParallelLinear(256, [512, 512]), RowParallelLinear(512, 256)]
    finally:
        torch.set_default_dtype(prev)
    g = torch.Generator().manual_seed(3)
    for lin in layers:
        w = torch.randn(lin.weight.shape, generator=g) * lin.in_features ** -0.5
        lin.weight.data.copy_(w.to(values_dtype))
        if lin.bias is not None:
            lin.bias.data.copy_((torch.randn(lin.bias.shape, generator=g) * 0.1).to(values_dtype))
    return layers


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_layers_on_cuda_match_cpu_and_capture_in_a_graph(scheme, dtype):
    """The engine's layers: the CUDA dispatch (kernels) equals the CPU dispatch (reference), in a CUDA graph too."""
    cpu, gpu = make_layers("cpu", torch.float32, dtype), make_layers("cuda", dtype, dtype)
    for a, b in zip(cpu, gpu):
        quantize_layer(a, scheme)
        quantize_layer(b, scheme)
        assert torch.equal(a.weight, b.weight.cpu()) and torch.equal(a.weight_scale, b.weight_scale.cpu())
    for m in (1, 24):
        x = torch.randn(m, 256).to(dtype)
        for a, b in zip(cpu, gpu):
            xin = x if a.in_features == 256 else torch.randn(m, 512).to(dtype)
            ref = a(xin.float())
            y = b(xin.cuda())
            assert rel_err(y, ref) < 3 * TOL[dtype]
            static_x = xin.cuda().clone()
            b(static_x)  # warm (compiled) before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = b(static_x)
            static_x.copy_(xin.cuda())
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, y)
            if isinstance(b, MergedColumnParallelLinear):
                act = b.quant_method.apply_gated(b, xin.cuda())  # [gate; up] -> silu(gate) * up, one kernel
                if m > 1 and scheme == "w8a8":  # from two tokens W8A8 has no fused form: the caller's gate
                    assert act is None
                    continue
                half = ref.shape[1] // 2
                assert rel_err(act, torch.nn.functional.silu(ref[:, :half]) * ref[:, half:]) < 3 * TOL[dtype]


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8"])
def test_engine_on_cuda_with_quant_matches_the_cpu_reference(tiny_model, scheme):
    """The whole engine (CUDA graphs included) with int8 kernels against the CPU reference path."""
    from inference.config import EngineConfig, SamplingParams
    from inference.engine.llm_engine import LLMEngine
    from inference.eval.logits_metrics import compare_logits

    prompts = [[9707, 11, 847, 829, 374], list(range(1000, 1040))]
    out = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        e = LLMEngine(EngineConfig(model=str(tiny_model), device=device, dtype=dtype, num_kv_blocks=64, quant=scheme))
        params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, logits="last")
        rids = [e.add_request(p, params) for p in prompts]
        logits = {}
        while e.has_unfinished():
            for o in e.step():
                if o.finished:
                    logits[o.request_id] = o.logits.float().cpu()
        e.shutdown()
        out[device] = [logits[r] for r in rids]
    for a, b in zip(out["cpu"], out["cuda"]):
        assert compare_logits(a.reshape(1, -1), b.reshape(1, -1))["last_cosine"] > 0.99
