"""CUDA: each fused step of `inference.layers.fusion` runs its fused kernels where it should and gives what the
unfused kernels give (bit for bit where the two round alike), and within rounding of float64. Run on the
lent GPU: `python -m pytest -q -m gpu tests/test_gpu_fusion.py`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.support.launches import cuda_kernels, launched
from tests.support.oracle import rel

pytestmark = pytest.mark.gpu


def row_linear(k: int, n: int, dtype, seed: int):
    from inference.layers.linear import RowParallelLinear

    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.device("cuda"):
        lin = RowParallelLinear(k, n).to(dtype)
    lin.weight.data.normal_(0, k**-0.5, generator=g)
    return lin


def rms_norm(n: int, dtype):
    from inference.layers.layernorm import RMSNorm

    g = torch.Generator(device="cuda").manual_seed(n)
    with torch.device("cuda"):
        norm = RMSNorm(n, 1e-6).to(dtype)
    norm.weight.data.uniform_(0.5, 1.5, generator=g)
    return norm


def rms64(s: torch.Tensor, norm) -> torch.Tensor:
    return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def inputs(rows: int, k: int, n: int, dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(rows, k, device="cuda", dtype=dtype, generator=g),
            torch.randn(rows, n, device="cuda", dtype=dtype, generator=g))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows, k, n", [(2, 4096, 4096), (16, 4096, 4096), (64, 4096, 4096), (64, 11008, 4096),
                                        (9, 512, 4608)])
def test_project_add_norm_at_decode_rows_norms_in_the_matmuls_reduce(dtype, rows, k, n):
    """2-64 rows: the skinny GEMM with the residual add + RMSNorm in its split-K reduce (after it, unsplit):
    bit for bit the projection, then the add + norm kernel."""
    from inference.kernels.skinny import skinny_config
    from inference.layers.fusion import project_add_norm

    lin, norm = row_linear(k, n, dtype, rows + k), rms_norm(n, dtype)
    x, res = inputs(rows, k, n, dtype, rows + k)
    h, stream = project_add_norm(lin, x, res.clone(), norm)
    h_ref, stream_ref = norm(lin(x), res)
    assert torch.equal(h, h_ref) and torch.equal(stream, stream_ref)
    s = res.double() + x.double() @ lin.weight.double().T
    assert rel(stream, s) < 5e-3 and rel(h, rms64(s, norm)) < 1e-2
    kernels = cuda_kernels(lambda: project_add_norm(lin, x, res.clone(), norm))
    split = skinny_config(rows, n, k, x.device)[-1]
    assert launched(kernels, "_reduce_norm_kernel") == (split > 1), kernels
    assert launched(kernels, "_add_rmsnorm_kernel") == (split == 1), kernels
    assert not launched(kernels, "_reduce_kernel"), kernels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [65, 100, 4096])
def test_project_add_norm_at_prefill_rows_adds_in_the_matmuls_epilogue(dtype, rows):
    """Over 64 rows: the residual is added by cuBLAS's epilogue, over the residual's own tensor, then the norm."""
    from inference.layers.fusion import project_add_norm

    lin, norm = row_linear(1024, 512, dtype, rows), rms_norm(512, dtype)
    x, res = inputs(rows, 1024, 512, dtype, rows)
    r = res.clone()
    h, stream = project_add_norm(lin, x, r, norm)
    assert stream.data_ptr() == r.data_ptr()  # the sum is the matmul's output, written over the residual
    s = res.double() + x.double() @ lin.weight.double().T
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert rel(stream, s) < tol and rel(h, rms64(s, norm)) < 2 * tol
    h_ref, stream_ref = norm(lin(x), res)
    assert rel(stream, stream_ref) < tol and rel(h, h_ref) < 2 * tol


@pytest.mark.parametrize("case", ["one row", "float32", "w8a16"])
def test_project_add_norm_elsewhere_is_the_projection_then_the_add_and_norm(case):
    """Where no fusion applies (the GEMV's single row, float32 decode rows, a quantized projection): exactly the
    projection, then the add + norm kernel."""
    from inference.layers.fusion import project_add_norm
    from inference.quant.apply import quantize_layer

    dtype = torch.float32 if case == "float32" else torch.float16
    rows = 1 if case == "one row" else 16
    lin, norm = row_linear(1024, 512, dtype, 7), rms_norm(512, dtype)
    if case == "w8a16":
        quantize_layer(lin, "w8a16")
    x, res = inputs(rows, 1024, 512, dtype, 7)
    r = res.clone()
    h, stream = project_add_norm(lin, x, r, norm)
    h_ref, stream_ref = norm(lin(x), res)
    assert torch.equal(h, h_ref) and torch.equal(stream, stream_ref) and torch.equal(r, res)
    kernels = cuda_kernels(lambda: project_add_norm(lin, x, res.clone(), norm))
    assert launched(kernels, "_add_rmsnorm_kernel") and not launched(kernels, "_reduce_norm_kernel"), kernels


def attention_layers(dtype, h: int, d: int, seed: int):
    from inference.layers.attention import PagedAttention
    from inference.layers.linear import QKVParallelLinear

    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.device("cuda"):
        c_attn, attn = QKVParallelLinear(h * d, bias=True).to(dtype), PagedAttention(h, d)
    c_attn.weight.data.normal_(0, (h * d) ** -0.5, generator=g)
    c_attn.bias.data.normal_(0, 0.25, generator=g)
    return c_attn, attn


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [2, 16, 64])
@pytest.mark.parametrize("logn", [False, True])
def test_qkv_rope_at_decode_rows_is_one_kernel_with_the_bits_of_two(dtype, m, logn):
    """Every row a decode row (Hopper): c_attn, rotary, logn and the K/V store in one kernel, giving the bits of
    c_attn then `rope_and_store` (what a step with prefill rows runs); q within rounding of torch's rotary."""
    from inference.layers.fusion import qkv_rope

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the fused kernel loads its tiles through the TMA (Hopper and newer)")
    h, d, nb, bs = 32, 128, 64, 16
    c_attn, attn = attention_layers(dtype, h, d, m)
    g = torch.Generator(device="cuda").manual_seed(m + logn)
    x = torch.randn(m, h * d, device="cuda", dtype=dtype, generator=g)
    freqs = torch.randint(0, 8000, (m, 1), device="cuda", generator=g) / 10000 ** (
        torch.arange(0, d, 2, device="cuda") / d)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    ln = torch.rand(m, device="cuda", generator=g) + 0.5 if logn else None
    slots = torch.randperm(nb * bs, device="cuda", generator=g)[:m]
    caches = [torch.zeros(nb, h, bs, d, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(2)]

    def run(num_decodes: int, full_rotary: bool = True):
        attn.k_cache, attn.v_cache = (c.clone() for c in caches)
        meta = SimpleNamespace(num_decodes=num_decodes, slot_mapping=slots)
        q, k, v, stored = qkv_rope(c_attn, attn, x, cos, sin, ln, meta, full_rotary)
        return q, k, stored, attn.k_cache, attn.v_cache

    q1, k1, stored1, kc1, vc1 = run(m)
    q2, _, stored2, kc2, vc2 = run(0)
    assert k1 is None and stored1 and stored2
    assert torch.equal(q1, q2) and torch.equal(kc1, kc2) and torch.equal(vc1, vc2)
    q3, k3, stored3, _, _ = run(m, full_rotary=False)  # torch's rotary on the same inputs
    assert not stored3 and rel(q1, q3) < 1e-2
    blk, off = slots // bs, slots % bs
    assert rel(kc1[blk, off], k3) < 1e-2
    kernels = cuda_kernels(lambda: run(m))
    assert launched(kernels, "_qkv_rope_kernel") and not launched(kernels, "_rope_store_kernel"), kernels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 16, 64, 100])
def test_gated_act_gates_in_the_matmul_at_decode_rows(dtype, m):
    """1 row: the GEMV, 2-64: the skinny GEMM, each with silu(gate) * up in its epilogue; more rows: cuBLAS,
    then the SiLU-and-multiply kernel. Each within rounding of float64 and of the other form."""
    from inference.kernels.fused import silu_mul
    from inference.layers.fusion import gated_act
    from inference.layers.linear import MergedColumnParallelLinear

    g = torch.Generator(device="cuda").manual_seed(m)
    with torch.device("cuda"):
        w2_w1 = MergedColumnParallelLinear(1024, [2752, 2752]).to(dtype)
    w2_w1.weight.data.normal_(0, 1024**-0.5, generator=g)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype, generator=g)
    act = gated_act(w2_w1, x)
    gate, up = (x.double() @ w2_w1.weight.double().T).chunk(2, -1)
    unfused = silu_mul(torch.nn.functional.linear(x, w2_w1.weight))
    assert act.shape == (m, 2752) and rel(act, torch.nn.functional.silu(gate) * up) < 1e-2 and rel(act, unfused) < 1e-2
    kernels = cuda_kernels(lambda: gated_act(w2_w1, x))
    fused = "_gemv_kernel" if m == 1 else "_skinny_tma_kernel" if launched(kernels, "_skinny_tma_kernel") \
        else "_skinny_kernel"
    assert launched(kernels, fused) == (m <= 64) and launched(kernels, "_silu_mul_kernel") == (m > 64), kernels


def test_paged_attention_decodes_with_the_triton_kernel_on_cuda():
    """The layer picks the Triton decode kernel by itself on CUDA (nothing set on it after construction)."""
    from inference.kernels.paged_attention import paged_decode_attention
    from inference.layers.attention import PagedAttention, decode_attention_torch

    g = torch.Generator(device="cuda").manual_seed(5)
    nb, bs, h, d, b = 200, 16, 32, 128, 4
    with torch.device("cuda"):
        attn = PagedAttention(h, d)
    attn.k_cache, attn.v_cache = (torch.randn(nb, h, bs, d, device="cuda", dtype=torch.float16, generator=g)
                                  .transpose(1, 2) for _ in range(2))
    ctx = torch.tensor([5, 300, 17, 640], dtype=torch.int32, device="cuda")
    bt = torch.randperm(nb, device="cuda", generator=g)[: b * 40].view(b, 40).to(torch.int32)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.float16, generator=g)
    meta = SimpleNamespace(num_decodes=b, num_seqs=b, block_tables=bt, context_lens=ctx, max_ctx=640)
    out = attn(q, None, None, meta, stored=True)
    assert torch.equal(out, paged_decode_attention(q, attn.k_cache, attn.v_cache, bt, ctx, 640, attn.scale))
    ref = decode_attention_torch(q.double(), attn.k_cache.double(), attn.v_cache.double(), bt, ctx, 640, attn.scale)
    assert rel(out, ref) < 1e-2
    kernels = cuda_kernels(lambda: attn(q, None, None, meta, stored=True))
    assert any("_paged_decode" in k for k in kernels), kernels
