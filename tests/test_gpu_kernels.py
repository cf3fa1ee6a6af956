"""CUDA: the Triton kernels and the layers that call them against torch and float64 (run on the lent GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.support.oracle import rel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("dtype, splits", [(torch.float16, 1), (torch.bfloat16, 1), (torch.float16, 8),
                                           (torch.bfloat16, 2)])
def test_paged_decode_kernel_matches_torch(dtype, splits, dot):
    """Both forms (CUDA cores; tensor cores with the probabilities rounded to the cache dtype) against float64."""
    from inference.kernels.paged_attention import paged_decode_attention
    from inference.layers.attention import decode_attention_torch

    g = torch.Generator(device="cuda").manual_seed(1)
    nb, bs, h, d = 400, 16, 32, 128
    kc = torch.randn(nb, bs, h, d, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(nb, bs, h, d, device="cuda", dtype=dtype, generator=g)
    ctx = torch.tensor([1, 17, 300, 1000, 0], dtype=torch.int32, device="cuda")
    bt = torch.randperm(nb, device="cuda", generator=g)[: 5 * 64].view(5, 64).to(torch.int32)
    q = torch.randn(5, h, d, device="cuda", dtype=dtype, generator=g)
    out = paged_decode_attention(q, kc, vc, bt, ctx, 1000, d**-0.5, splits=splits, dot=dot)
    ref = decode_attention_torch(q[:4].double(), kc.double(), vc.double(), bt[:4], ctx[:4], 1000, d**-0.5)
    assert rel(out[:4], ref) < 1e-2 and not out.isnan().any()
    assert rel(out[:4], ref * 1.02) > 1e-2  # a 2 % error would fail: the bound can fail
    assert out[4].abs().max().item() == 0.0  # length 0 (graph padding) gives zeros


@pytest.mark.parametrize("dot", [False, True])
def test_paged_decode_kernel_reaches_blocks_past_int32_offsets(dot):
    """A cache of more than 2**31 elements takes 64-bit offsets (`WIDE`): blocks at its end read right."""
    from inference.kernels.paged_attention import paged_decode_attention
    from inference.layers.attention import decode_attention_torch

    bs, h, d = 16, 4, 128
    nb = 2**31 // (bs * h * d) + 64  # 4 GiB of float16 for K, as much for V
    kc, vc = (torch.zeros(nb, h, bs, d, device="cuda", dtype=torch.float16).transpose(1, 2) for _ in range(2))
    g = torch.Generator(device="cuda").manual_seed(3)
    ends = torch.arange(nb - 40, nb, device="cuda")  # offsets from 2**31 + 24 blocks up: past int32
    for c in (kc, vc):
        c[ends] = torch.randn(40, bs, h, d, device="cuda", dtype=torch.float16, generator=g)
    bt = ends[torch.randperm(40, device="cuda", generator=g)].view(5, 8).to(torch.int32)
    ctx = torch.tensor([128, 1, 77, 120, 16], dtype=torch.int32, device="cuda")
    q = torch.randn(5, h, d, device="cuda", dtype=torch.float16, generator=g)
    out = paged_decode_attention(q, kc, vc, bt, ctx, 128, d**-0.5, dot=dot)
    ref = decode_attention_torch(q.double(), kc[ends].double(), vc[ends].double(), bt - (nb - 40), ctx, 128,
                                 d**-0.5)
    assert rel(out, ref) < 1e-2 and not out.isnan().any()
    del kc, vc
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype, splits", [(torch.float16, None), (torch.bfloat16, 1), (torch.float16, 8),
                                           (torch.float32, 2)])
def test_row_group_attention_matches_float64(dtype, splits):
    """Prefill rows in aligned groups of one sequence (a 40-token chunk after 1500 cached tokens and a fresh
    16-token prompt, each padded to a group), each row causal: against float64, padding rows zero."""
    from inference.kernels import ROW_GROUP
    from inference.kernels.row_group_attention import row_group_attention
    from inference.layers.attention import decode_attention_torch

    g = torch.Generator(device="cuda").manual_seed(2)
    nb, bs, h, d = 400, 16, 32, 128
    kc = torch.randn(nb, bs, h, d, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(nb, bs, h, d, device="cuda", dtype=dtype, generator=g)
    tables = torch.randperm(nb, device="cuda", generator=g)[:2 * 100].view(2, 100).to(torch.int32)
    ctx = ([1500 + i + 1 for i in range(40)] + [0] * (-40 % ROW_GROUP) + [i + 1 for i in range(16)]
           + [0] * (-16 % ROW_GROUP))
    first = -(-40 // ROW_GROUP) * ROW_GROUP
    bt = torch.cat([tables[:1].expand(first, -1), tables[1:].expand(len(ctx) - first, -1)])
    lens = torch.tensor(ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(len(ctx), h, d, device="cuda", dtype=dtype, generator=g)
    out = row_group_attention(q, kc, vc, bt, lens, d**-0.5, splits=splits)
    real = lens > 0
    ref = decode_attention_torch(q[real].double(), kc.double(), vc.double(), bt[real], lens[real], 1540, d**-0.5)
    assert rel(out[real], ref) < (1e-5 if dtype == torch.float32 else 1e-2) and not out.isnan().any()
    assert not out[~real].any()


@pytest.mark.parametrize("ctx_lens", [[1000], [3], [700, 1], [16, 2000, 257, 999]])
def test_paged_decode_kernel_matches_torch_at_small_batches(ctx_lens):
    """Batches of 1-4, with the tiles and splits the kernel picks for them, against float64."""
    from inference.kernels.paged_attention import paged_decode_attention
    from inference.layers.attention import decode_attention_torch

    g = torch.Generator(device="cuda").manual_seed(len(ctx_lens))
    nb, bs, h, d, b = 600, 16, 32, 128, len(ctx_lens)
    kc, vc = (torch.randn(nb, h, bs, d, device="cuda", dtype=torch.float16, generator=g).transpose(1, 2)
              for _ in range(2))  # the engine's head-major layout
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device="cuda")
    bt = torch.randperm(nb, device="cuda", generator=g)[: b * 128].view(b, 128).to(torch.int32)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.float16, generator=g)
    out = paged_decode_attention(q, kc, vc, bt, ctx, max(ctx_lens), d**-0.5)
    ref = decode_attention_torch(q.double(), kc.double(), vc.double(), bt, ctx, max(ctx_lens), d**-0.5)
    assert rel(out, ref) < 1e-2 and not out.isnan().any()


def test_fused_kernels_match_torch():
    from inference.kernels.fused import add_rmsnorm, silu_mul

    g = torch.Generator(device="cuda").manual_seed(2)
    x, r = (torch.randn(7, 4096, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    w = torch.rand(4096, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
    out, res = add_rmsnorm(x, r, w, 1e-6)
    s = (x + r).float()
    ref = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
    assert rel(out, ref) < 1e-2 and rel(res, s) < 1e-2
    gu = torch.randn(5, 2 * 11008, device="cuda", dtype=torch.float16, generator=g)
    gate, up = gu.float().chunk(2, -1)
    assert rel(silu_mul(gu), torch.nn.functional.silu(gate) * up) < 1e-2


@pytest.mark.parametrize("t, h", [(9, 32), (300, 32), (100, 40), (70, 5)])  # decode / prefill tiles of heads
def test_rope_and_store_matches_torch(t, h):
    from inference.kernels.fused import rope_and_store
    from inference.layers.rotary import RotaryEmbedding, apply_rotary

    g = torch.Generator(device="cuda").manual_seed(t + h)
    d = 128
    qkv = torch.randn(t, 3 * h * d, device="cuda", dtype=torch.float16, generator=g)
    pos = torch.randint(0, 9000, (t,), device="cuda", generator=g)
    cos, sin = RotaryEmbedding(d, 10000.0, "cuda").for_tokens(pos)
    nb = -(-t // 16) + 1
    kc, vc = (torch.full((nb, 16, h, d), float("nan"), device="cuda", dtype=torch.float16) for _ in range(2))
    slots = torch.arange(t, device="cuda")
    slots[-1] = -1
    logn = torch.rand(t, device="cuda") + 1
    q, k = rope_and_store(qkv, cos, sin, logn, kc, vc, slots, h, d)
    q0, k0, v0 = qkv.view(t, 3, h, d).unbind(1)
    qr = apply_rotary(q0.float(), cos, sin) * logn[:, None, None]
    kr = apply_rotary(k0.float(), cos, sin)
    assert rel(q, qr) < 1e-3 and rel(k, kr) < 1e-3
    assert rel(kc.view(-1, h, d)[: t - 1], kr[: t - 1]) < 1e-3 and torch.equal(vc.view(-1, h, d)[: t - 1], v0[: t - 1])
    assert kc.view(-1, h, d)[t - 1:].isnan().all()  # slot -1 (and the slots after it) got nothing


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n, k, bias, gated", [(12288, 4096, True, False), (4099, 11008, False, False),
                                               (11008, 4096, False, True), (37, 200, True, False)])
def test_gemv_matches_torch(dtype, n, k, bias, gated):
    from inference.kernels.gemv import gemv

    g = torch.Generator(device="cuda").manual_seed(3)
    w = torch.randn(2 * n if gated else n, k + 8, device="cuda", dtype=dtype, generator=g)[:, :k]  # row stride > k
    b = torch.randn(n, device="cuda", dtype=dtype, generator=g) if bias else None
    x = torch.randn(1, k, device="cuda", dtype=dtype, generator=g)
    y = gemv(x, w, b, gated=gated)
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    if gated:
        gate, up = ref.chunk(2, -1)
        ref = torch.nn.functional.silu(gate) * up
    assert y.shape == (1, n) and not y.isnan().any()
    assert rel(y, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [2, 16, 33, 64])
@pytest.mark.parametrize(("n", "k", "bias", "gated"), [(4096, 4096, True, False), (1000, 1100, False, True),
                                                        (11008 // 4, 4096, False, True), (4096, 11008, False, False)])
@pytest.mark.parametrize("config", [None, (64, None, 128, 4, 3, 1), (128, None, 64, 4, 4, 4)])
@pytest.mark.parametrize("tma", [False, True])
def test_skinny_gemm_matches_float64(dtype, m, n, k, bias, gated, config, tma):
    from inference.kernels.skinny import skinny_config, skinny_gemm, use_tma

    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    w = torch.randn(2 * n if gated else n, k + 8, device="cuda", dtype=dtype, generator=g)[:, :k] / k**0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=g) if bias else None
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
    if config is not None:  # the BLOCK_M the heuristic picks for m, the rest forced
        config = (config[0], skinny_config(m, n, k, x.device)[1], *config[2:])
    if tma:  # the TMA form where this GPU has one and the rows are 16-byte aligned (k = 1100's are not)
        tma = use_tma(x, w)
        assert tma == (torch.cuda.get_device_capability()[0] >= 9 and k % 8 == 0)
    y = skinny_gemm(x, w, b, gated=gated, config=config, tma=tma)
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    if gated:
        gate, up = ref.chunk(2, -1)
        ref = torch.nn.functional.silu(gate) * up
    assert y.shape == (m, n) and y.dtype == dtype and not y.isnan().any()
    assert rel(y, ref) < (2e-3 if dtype == torch.float16 else 8e-3)


def test_skinny_gemm_runs_a_config_over_the_shared_memory():
    """A pipeline too deep for this GPU's shared memory still gives the right result, the first time and
    the next (with fewer stages)."""
    from inference.kernels.skinny import skinny_gemm

    g = torch.Generator(device="cuda").manual_seed(11)
    w = torch.randn(2 * 2752, 4096, device="cuda", dtype=torch.float16, generator=g) / 64
    x = torch.randn(16, 4096, device="cuda", dtype=torch.float16, generator=g)
    config = (128, 16, 256, 4, 6, 1)  # 6 stages of two 128 x 256 weight tiles: far over the shared memory
    gate, up = (x.double() @ w.double().T).chunk(2, -1)
    for _ in range(2):
        y = skinny_gemm(x, w, gated=True, config=config)
        assert rel(y, torch.nn.functional.silu(gate) * up) < 2e-3


@pytest.mark.parametrize("split", [1, 4])
def test_skinny_gemm_fused_norm_equals_matmul_then_norm(split):
    """norm=(residual, weight, eps), K split (the reduce kernel adds and normalizes) or not: bit for bit
    what the matmul and then `add_rmsnorm` give."""
    from inference.kernels.fused import add_rmsnorm
    from inference.kernels.skinny import skinny_gemm

    g = torch.Generator(device="cuda").manual_seed(split)
    x = torch.randn(16, 4096, device="cuda", dtype=torch.float16, generator=g)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=g) / 64
    res = torch.randn(16, 4096, device="cuda", dtype=torch.float16, generator=g)
    nw = torch.rand(4096, device="cuda", dtype=torch.float16, generator=g) + 0.5
    config = (64, 16, 128, 4, 3, split)
    h, stream = skinny_gemm(x, w, norm=(res, nw, 1e-6), config=config)
    h_ref, stream_ref = add_rmsnorm(skinny_gemm(x, w, config=config), res, nw, 1e-6)
    assert torch.equal(h, h_ref) and torch.equal(stream, stream_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cached_prefix_prefill_attention_is_lower_right_causal(dtype):
    from inference.layers.attention import prefill_attention

    g = torch.Generator(device="cuda").manual_seed(6)
    bs, h, d, ctx, n = 16, 8, 128, 301, 45  # 256 cached tokens, a chunk of 45
    nb = -(-ctx // bs)
    kc, vc = (torch.randn(40, bs, h, d, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    table = torch.randperm(40, device="cuda", generator=g)[:nb]
    q = torch.randn(n, h, d, device="cuda", dtype=dtype, generator=g)
    flat_k, flat_v = (c[table].reshape(-1, h, d)[:ctx] for c in (kc, vc))
    out = prefill_attention(q, flat_k[-n:], flat_v[-n:], kc, vc, table, ctx, False, d**-0.5)
    mask = torch.arange(ctx, device="cuda")[None, :] <= torch.arange(ctx - n, ctx, device="cuda")[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double().transpose(0, 1), flat_k.double().transpose(0, 1), flat_v.double().transpose(0, 1),
        attn_mask=mask, scale=d**-0.5).transpose(0, 1)
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("n", [1024, 1500, 4096])
def test_cudnn_prefill_padding_is_exact(n):
    from inference.layers.attention import causal_cudnn

    g = torch.Generator(device="cuda").manual_seed(4)
    q, k, v = (torch.randn(n, 8, 128, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
    out = causal_cudnn(q, k, v, 128**-0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.double().transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=128**-0.5).transpose(0, 1)
    assert out.shape == q.shape and rel(out, ref) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [2, 16, 33, 64])
@pytest.mark.parametrize("logn", [False, True])
def test_qkv_rope_store_is_c_attn_then_rope_and_store(dtype, m, logn):
    """The fused c_attn + rotary + K/V store gives the bits of the skinny GEMM then `rope_and_store` (q, the
    head-major caches, a skipped slot left alone), and is within rounding of float64."""
    from inference.kernels.fused import rope_and_store
    from inference.kernels.qkv_rope import qkv_rope_store
    from inference.kernels.skinny import skinny_gemm

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the fused kernel loads its tiles through the TMA (Hopper and newer)")
    h, d, hidden, nb, bs = 32, 128, 4096, 64, 16
    g = torch.Generator(device="cuda").manual_seed(m + logn)
    w = torch.randn(3 * h * d, hidden, device="cuda", dtype=dtype, generator=g) / hidden**0.5
    b = torch.randn(3 * h * d, device="cuda", dtype=dtype, generator=g) / 4
    x = torch.randn(m, hidden, device="cuda", dtype=dtype, generator=g)
    pos = torch.randint(0, 8000, (m,), device="cuda", generator=g)
    freqs = pos[:, None].float() / 10000 ** (torch.arange(0, d, 2, device="cuda") / d)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    ln = torch.rand(m, device="cuda", generator=g) + 0.5 if logn else None
    slots = torch.randperm(nb * bs, device="cuda", generator=g)[:m]
    slots[m // 2] = -1
    caches = [torch.randn(nb, h, bs, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2) for _ in range(2)]
    k1, v1 = (c.clone() for c in caches)
    k2, v2 = (c.clone() for c in caches)
    q1 = qkv_rope_store(x, w, b, cos, sin, ln, k1, v1, slots, h, d)
    assert q1 is not None
    q2, _ = rope_and_store(skinny_gemm(x, w, b), cos, sin, ln, k2, v2, slots, h, d)
    assert torch.equal(q1, q2) and torch.equal(k1, k2) and torch.equal(v1, v2)
    ref = (x.double() @ w.double().T + b.double()).view(m, 3, h, d)

    def rotate(t, rows):
        t1, t2 = t.chunk(2, -1)
        return t * cos.double()[rows, None] + torch.cat([-t2, t1], -1) * sin.double()[rows, None]

    q_ref = rotate(ref[:, 0], slice(None)) * (ln.double()[:, None, None] if logn else 1)
    kept = slots >= 0
    blk, off = slots[kept] // bs, slots[kept] % bs
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    assert rel(q1, q_ref) < tol and rel(v1[blk, off], ref[kept, 2]) < tol
    assert rel(k1[blk, off], rotate(ref[kept, 1], kept)) < tol
    untouched = torch.ones(nb * bs, dtype=torch.bool, device="cuda")
    untouched[slots[kept]] = False  # every other slot, the skipped token's included, as it was
    assert torch.equal(k1.flatten(0, 1)[untouched], caches[0].flatten(0, 1)[untouched])
    assert torch.equal(v1.flatten(0, 1)[untouched], caches[1].flatten(0, 1)[untouched])
