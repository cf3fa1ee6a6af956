"""Paged attention for prefill rows in a CUDA graph: GROUP consecutive query rows of one sequence attend
together, so a chunk that extends a cached prefix reads each K/V tile once per group, not once per row.

The rows are a prompt chunk laid out as decode rows (`ModelRunner.prefill_as_decode_rows`), each with its own
context length (position + 1: causal). The host aligns every sequence's rows to groups of GROUP (padding
rows have context length 0: they attend to nothing and give zeros), so a group has one block table, its first
row's. One program per (group, head, split of the context) runs a flash-attention loop on tensor cores with
the GROUP queries as the MMA's rows; with splits, `paged_attention._combine_kernel` merges the partials.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inference.kernels import ROW_GROUP as GROUP
from inference.kernels import num_sms, pdl
from inference.kernels.fused import pdl_wait
from inference.kernels.paged_attention import LOG2E, _combine_kernel, _tile


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # float32 caches: exact float32 products, not tf32
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _row_group_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, m_ptr, l_ptr, acc_ptr, scale,
                      stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_bt, stride_ob, stride_oh,
                      SPLITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_N: tl.constexpr, WIDE: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    g = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    r = g * GROUP + tl.arange(0, GROUP)
    d = tl.arange(0, HEAD_DIM)
    ctx = tl.load(ctx_ptr + r)
    top = tl.max(ctx, 0)
    chunk = tl.cdiv(tl.cdiv(top, SPLITS), BLOCK_N) * BLOCK_N
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, top)
    q = tl.load(q_ptr + r[:, None] * stride_qb + h * stride_qh + d[None, :])
    m_i = tl.full([GROUP], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP], dtype=tl.float32)
    acc = tl.zeros([GROUP, HEAD_DIM], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        mask, off = _tile(bt_ptr, g * GROUP, h, start, hi, stride_kb, stride_ks, stride_kh, stride_bt, BLOCK_SIZE,
                          BLOCK_N, WIDE)
        t = start + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
        seen = mask[None, :] & (t[None, :] < ctx[:, None])  # causal: row i sees its first ctx[i] tokens
        s = tl.where(seen, _dot(q, tl.trans(k), IEEE) * (scale * LOG2E), -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row that has seen nothing yet stays at zero
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    if SPLITS == 1:
        out = acc / tl.maximum(l_i, 1e-30)[:, None]
        tl.store(out_ptr + r[:, None] * stride_ob + h * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty))
    else:
        row = (r * tl.num_programs(1) + h) * SPLITS + sp
        tl.store(m_ptr + row, m_i)
        tl.store(l_ptr + row, l_i)
        tl.store(acc_ptr + row[:, None] * HEAD_DIM + d[None, :], acc)


def group_splits(groups: int, heads: int, device: torch.device) -> int:
    """Splits of each context (a power of two, 1..8): about one program per multiprocessor."""
    want = num_sms(device.index or 0) // max(groups * heads, 1)
    return 1 if want < 2 else min(8, 1 << want.bit_length() - 1)


def row_group_attention(q, k_cache, v_cache, block_tables, context_lens, scale, splits=None):
    """q [B, H, D] (B a multiple of GROUP; rows g*GROUP .. g*GROUP + GROUP - 1 of one sequence, whose block table
    is row g*GROUP's) -> [B, H, D]; rows with context length 0 give zeros. `splits` overrides `group_splits`."""
    b, h, d = q.shape
    if b % GROUP:
        raise ValueError(f"row_group_attention: {b} rows, not a multiple of {GROUP}")
    out = torch.empty_like(q)
    if b == 0:
        return out
    groups = b // GROUP
    splits = splits or group_splits(groups, h, q.device)
    on = pdl(q)
    meta = dict(SPLITS=splits, GROUP=GROUP, BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=d, BLOCK_N=64,
                WIDE=k_cache.shape[0] * k_cache.stride(0) >= 2**31, IEEE=q.dtype == torch.float32, PDL=on,
                launch_pdl=on, num_warps=4, num_stages=2)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
               block_tables.stride(0), out.stride(0), out.stride(1))
    if splits == 1:
        _row_group_kernel[(groups, h, 1)](q, k_cache, v_cache, block_tables, context_lens, out, out, out, out, scale,
                                          *strides, **meta)
        return out
    m = torch.empty(b, h, splits, dtype=torch.float32, device=q.device)
    lsum = torch.empty_like(m)
    acc = torch.empty(b, h, splits, d, dtype=torch.float32, device=q.device)
    _row_group_kernel[(groups, h, splits)](q, k_cache, v_cache, block_tables, context_lens, out, m, lsum, acc, scale,
                                           *strides, **meta)
    _combine_kernel[(b, h)](m, lsum, acc, out, out.stride(0), out.stride(1), SPLITS=splits, HEAD_DIM=d,
                            num_warps=4, PDL=on, launch_pdl=on)
    return out
