"""Paged decode attention: one program per (sequence, head) walks its block table with an online softmax.

K/V cache layout per layer: [num_blocks, block_size, heads, head_dim]. The context length is read from
a tensor, so the kernel can be captured in a CUDA graph with the block table and lengths as buffers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, scale,
                         stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_bt, stride_ob, stride_oh,
                         BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d).to(tl.float32) * scale
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, ctx, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        mask = t < ctx
        blk = tl.load(bt_ptr + b * stride_bt + t // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
        off = blk * stride_kb + (t % BLOCK_SIZE) * stride_ks + h * stride_kh
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], 1)
        s = tl.where(mask, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    out = acc / tl.maximum(l_i, 1e-30)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale):
    """q [B, H, D] -> [B, H, D]; rows with context length 0 (graph padding) give zeros."""
    b, h, d = q.shape
    out = torch.empty_like(q)
    if b == 0:
        return out
    block_n = 64 if k_cache.shape[1] <= 64 else k_cache.shape[1]
    _paged_decode_kernel[(b, h)](
        q, k_cache, v_cache, block_tables, context_lens, out, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=d, BLOCK_N=block_n, num_warps=4)
    return out
