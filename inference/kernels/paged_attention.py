"""Paged decode attention: one program per (sequence, head) walks its block table with an online softmax,
on CUDA cores at batch 1-4 and on tensor cores above (`use_dot`).

K/V cache layout per layer: [num_blocks, block_size, heads, head_dim]. The context length is read from
a tensor, so the kernel can be captured in a CUDA graph with the block table and lengths as buffers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inference.kernels import capability_at_least, num_sms, pdl
from inference.kernels.fused import pdl_wait

LOG2E = tl.constexpr(1.4426950408889634)

# Tiles are fixed choices (`decode_config`), not autotuned: the engine first runs the kernel while capturing
# CUDA graphs, on empty contexts, where every candidate looks alike.


@triton.jit
def _tile(bt_ptr, b, h, start, hi, stride_kb, stride_ks, stride_kh, stride_bt, BLOCK_SIZE: tl.constexpr,
          BLOCK_N: tl.constexpr, WIDE: tl.constexpr):
    """Context tokens [start, start + BLOCK_N) of sequence b: (below hi, offsets of head h's K/V rows).
    Unsigned token indices (no sign fix-ups in // and %) and 32-bit offsets unless the cache needs 64
    (`WIDE`): a third fewer instructions in the tensor-core loop."""
    t = (start + tl.arange(0, BLOCK_N)).to(tl.uint32)
    mask = t < hi
    blk = tl.load(bt_ptr + b * stride_bt + t // BLOCK_SIZE, mask=mask, other=0)
    if WIDE:
        blk = blk.to(tl.int64)
    return mask, blk * stride_kb + ((t % BLOCK_SIZE) * stride_ks + h * stride_kh).to(tl.int32)


@triton.jit
def _attend_cores(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb, stride_ks,
                  stride_kh, stride_bt, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  WIDE: tl.constexpr):
    """Online softmax of one query head over context tokens [lo, hi) on CUDA cores, in float32:
    (max, sum, unnormalised output). Scores in base 2 (log2 e folded into the scale, so exp2 needs no
    multiply): the max is in those units, and the combine kernel takes exp2 of it too."""
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d).to(tl.float32) * (scale * LOG2E)
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        mask, off = _tile(bt_ptr, b, h, start, hi, stride_kb, stride_ks, stride_kh, stride_bt, BLOCK_SIZE, BLOCK_N,
                          WIDE)
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.where(mask, tl.sum(k * q[None, :], 1), -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp2(s - m_new)
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _attend_dot(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb, stride_ks,
                stride_kh, stride_bt, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                WIDE: tl.constexpr):
    """`_attend_cores` on tensor cores: the query repeated over 16 rows (the smallest MMA), keys and values fed
    to the MMAs in the cache's dtype, which lets Triton pipeline their loads through shared memory (cp.async)
    so the next tile streams in while this one is used; the probabilities are rounded to the cache dtype
    for P V, as flash attention does. float16 / bfloat16 caches only."""
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d)
    q16 = tl.broadcast_to(q[None, :], (16, HEAD_DIM))
    m_i = tl.full([16], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([16], dtype=tl.float32)
    acc = tl.zeros([16, HEAD_DIM], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        mask, off = _tile(bt_ptr, b, h, start, hi, stride_kb, stride_ks, stride_kh, stride_bt, BLOCK_SIZE, BLOCK_N,
                          WIDE)
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
        s = tl.where(mask[None, :], tl.dot(q16, tl.trans(k)) * (scale * LOG2E), -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    row0 = tl.arange(0, 16) == 0  # every row holds the same answer: take the first, exactly
    return (tl.max(tl.where(row0, m_i, -float("inf")), 0), tl.sum(tl.where(row0, l_i, 0.0), 0),
            tl.sum(tl.where(row0[:, None], acc, 0.0), 0))


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb, stride_ks,
            stride_kh, stride_bt, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
            WIDE: tl.constexpr, DOT: tl.constexpr):
    """Online softmax of one query head over context tokens [lo, hi): (max, sum, unnormalised output), on
    tensor cores (DOT) or CUDA cores."""
    if DOT:
        return _attend_dot(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb,
                           stride_ks, stride_kh, stride_bt, BLOCK_SIZE, HEAD_DIM, BLOCK_N, WIDE)
    return _attend_cores(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb,
                         stride_ks, stride_kh, stride_bt, BLOCK_SIZE, HEAD_DIM, BLOCK_N, WIDE)


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, scale,
                         stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_bt, stride_ob, stride_oh,
                         BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
                         DOT: tl.constexpr, WIDE: tl.constexpr):
    pdl_wait(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b)
    _, l_i, acc = _attend(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, 0, ctx, scale, stride_qb, stride_qh, stride_kb,
                          stride_ks, stride_kh, stride_bt, BLOCK_SIZE, HEAD_DIM, BLOCK_N, WIDE, DOT)
    out = acc / tl.maximum(l_i, 1e-30)
    d = tl.arange(0, HEAD_DIM)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _paged_decode_split_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, m_ptr, l_ptr, acc_ptr, scale,
                               stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_bt,
                               SPLITS: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                               BLOCK_N: tl.constexpr, PDL: tl.constexpr, DOT: tl.constexpr,
                               WIDE: tl.constexpr):
    """Flash-decoding: split `sp` of the context; partial max, sum and unnormalised output."""
    pdl_wait(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b)
    chunk = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, ctx)
    m_i, l_i, acc = _attend(q_ptr, k_ptr, v_ptr, bt_ptr, b, h, lo, hi, scale, stride_qb, stride_qh, stride_kb,
                            stride_ks, stride_kh, stride_bt, BLOCK_SIZE, HEAD_DIM, BLOCK_N, WIDE, DOT)
    row = (b * tl.num_programs(1) + h) * SPLITS + sp
    d = tl.arange(0, HEAD_DIM)
    tl.store(m_ptr + row, m_i)
    tl.store(l_ptr + row, l_i)
    tl.store(acc_ptr + row * HEAD_DIM + d, acc)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, stride_ob, stride_oh, SPLITS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = (b * tl.num_programs(1) + h) * SPLITS
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, HEAD_DIM)
    m = tl.load(m_ptr + row + s)
    mx = tl.max(m, 0)
    mx = tl.where(mx == -float("inf"), 0.0, mx)
    w = tl.exp2(m - mx)
    total = tl.sum(w * tl.load(l_ptr + row + s), 0)
    acc = tl.load(acc_ptr + (row + s)[:, None] * HEAD_DIM + d[None, :])
    out = tl.sum(w[:, None] * acc, 0) / tl.maximum(total, 1e-30)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def use_dot(q: torch.Tensor) -> bool:
    """The tensor-core form: batch 5 up, float16 / bfloat16, Ampere or newer (its tiles need 70 KB of shared
    memory)."""
    return (q.shape[0] > 4 and q.dtype != torch.float32 and q.is_cuda
            and capability_at_least(q.device.index or 0, 8))


def num_splits(q: torch.Tensor, dot: bool = False) -> int:
    """Splits of each context (a power of two, 1..8): about one program per multiprocessor, at least 2
    until the (sequence, head) pairs alone give 16 per multiprocessor; the tensor-core form (`dot`) does
    not split from 2 pairs per multiprocessor. Both thresholds were timed in the engine's decode step."""
    if not q.is_cuda:
        return 1
    sms = num_sms(q.device.index or 0)
    pairs = max(q.shape[0] * q.shape[1], 1)
    if pairs > 16 * sms or (dot and pairs >= 2 * sms):
        return 1
    want = max(sms // pairs, 2)
    return min(8, 1 << want.bit_length() - 1)


def decode_config(batch: int, splits: int, dot: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages): 256-token tiles at batch 1-4 (8 warps at batch 1), (128, 4, 2) on
    CUDA cores from batch 5 up, (64, 4, 2) in the tensor-core form (`dot`), split or not: the fastest
    measured, from batch 5 up inside the engine's decode step (the kernel timed alone ranks tiles otherwise)."""
    if batch <= 4:
        return (256, 8, 2) if batch == 1 else (256, 4, 2)
    if dot:
        return 64, 4, 2
    return 128, 4, 2


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale, splits=None,
                           config=None, dot=None):
    """q [B, H, D] -> [B, H, D]; rows with context length 0 (graph padding) give zeros. `splits`, `config`
    and `dot` override `num_splits`, `decode_config` and `use_dot` (the tests run every path)."""
    b, h, d = q.shape
    out = torch.empty_like(q)
    if b == 0:
        return out
    bsz = k_cache.shape[1]
    dot = use_dot(q) if dot is None else dot
    splits = splits or num_splits(q, dot)
    block_n, warps, stages = config or decode_config(b, splits, dot)
    on = pdl(q)
    wide = k_cache.shape[0] * k_cache.stride(0) >= 2**31  # an offset past int32 needs 64-bit arithmetic
    meta = dict(BLOCK_SIZE=bsz, HEAD_DIM=d, BLOCK_N=block_n, num_warps=warps, num_stages=stages, PDL=on,
                launch_pdl=on, DOT=dot, WIDE=wide)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
               block_tables.stride(0))
    if splits == 1:
        _paged_decode_kernel[(b, h)](q, k_cache, v_cache, block_tables, context_lens, out, scale, *strides,
                                     out.stride(0), out.stride(1), **meta)
        return out
    m = torch.empty(b, h, splits, dtype=torch.float32, device=q.device)
    lsum = torch.empty_like(m)
    acc = torch.empty(b, h, splits, d, dtype=torch.float32, device=q.device)
    _paged_decode_split_kernel[(b, h, splits)](q, k_cache, v_cache, block_tables, context_lens, m, lsum, acc, scale,
                                               *strides, SPLITS=splits, **meta)
    _combine_kernel[(b, h)](m, lsum, acc, out, out.stride(0), out.stride(1), SPLITS=splits, HEAD_DIM=d,
                            num_warps=4, PDL=on, launch_pdl=on)
    return out
