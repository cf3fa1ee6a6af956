"""c_attn, rotary (+ logn) and the K/V-cache store in one kernel, for decode steps of 2-64 rows on Hopper.

The skinny GEMM's 128-row output tile of c_attn is exactly one head of q, k or v (`skinny_config` takes
BLOCK_N = 128 for c_attn), so its epilogue can rotate the head and put it where the attention reads it:
q into a [T, H, D] tensor, k and v into their cache slots. That removes the rotary kernel from every
layer (`rope_and_store`). The rotation pairs (d, d + D/2) are rows
of the tile, split apart in registers. It rounds as the two-kernel path does (c_attn's output rounded
to the model dtype first; the rotation is `fused.rotate`, explicit FMAs, in both kernels), so the two
paths give the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from inference.kernels import capability_at_least, pdl
from inference.kernels.fused import pdl_wait, rotate
from inference.kernels.skinny import launch_fitted, skinny_config, use_tma


@triton.jit
def _qkv_rope_kernel(x_desc, w_desc, b_ptr, cos_ptr, sin_ptr, logn_ptr, slot_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                     M, K, num_heads, stride_cb, stride_cs, stride_ch, BLOCK_SIZE: tl.constexpr,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, HAS_LOGN: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_wait(PDL)
    pid_n = tl.program_id(0)  # q heads, then k heads, then v heads
    pid_m = tl.program_id(1)
    half: tl.constexpr = HEAD_DIM // 2
    acc = tl.zeros((HEAD_DIM, BLOCK_M), dtype=tl.float32)
    for t in range(tl.cdiv(K, BLOCK_K)):
        x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K])
        acc = tl.dot(w_desc.load([pid_n * HEAD_DIM, t * BLOCK_K]), x.T, acc)
    dt = q_ptr.dtype.element_ty
    d = tl.arange(0, HEAD_DIM)
    y = (acc + tl.load(b_ptr + pid_n * HEAD_DIM + d).to(tl.float32)[:, None]).to(dt)  # what c_attn writes
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = m < M
    which = pid_n // num_heads
    head = pid_n % num_heads
    slot = tl.load(slot_ptr + m, mask=ok, other=-1)
    cache = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + head * stride_ch
    keep = (ok & (slot >= 0))[None, :]
    if which == 2:  # v: as it is, into the cache
        tl.store(v_cache_ptr + cache[None, :] + d[:, None], y, mask=keep)
    else:
        y1, y2 = tl.split(tl.permute(tl.reshape(y.to(tl.float32), (2, half, BLOCK_M)), (1, 2, 0)))
        i = tl.arange(0, half)[:, None]
        rows = m[None, :] * HEAD_DIM + i
        c1 = tl.load(cos_ptr + rows, mask=ok[None, :], other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + rows + half, mask=ok[None, :], other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + rows, mask=ok[None, :], other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + rows + half, mask=ok[None, :], other=0.0).to(tl.float32)
        r1, r2 = rotate(y1, y2, c1, c2, s1, s2)
        if which == 0:
            if HAS_LOGN:
                g = tl.load(logn_ptr + m, mask=ok, other=0.0)[None, :]
                r1 = r1.to(dt).to(tl.float32) * g
                r2 = r2.to(dt).to(tl.float32) * g
            dst = q_ptr + m[None, :] * (num_heads * HEAD_DIM) + head * HEAD_DIM + i
            tl.store(dst, r1.to(dt), mask=ok[None, :])
            tl.store(dst + half, r2.to(dt), mask=ok[None, :])
        else:
            tl.store(k_cache_ptr + cache[None, :] + i, r1.to(dt), mask=keep)
            tl.store(k_cache_ptr + cache[None, :] + i + half, r2.to(dt), mask=keep)


def qkv_rope_store(x, weight, bias, cos, sin, logn, k_cache, v_cache, slot_mapping, num_heads: int,
                   head_dim: int) -> torch.Tensor | None:
    """x [T, hidden] through c_attn (weight [3*H*D, hidden], bias), rotated, k and v into the cache (slots < 0
    skipped): returns q [T, H, D] as `rope_and_store` would. None where it does not apply (not Hopper or
    later, 1 or more than 64 rows, float32, no cache, tiles other than one head, unaligned operands)."""
    m, k = x.shape
    if (not x.is_cuda or not 2 <= m <= 64 or x.dtype == torch.float32 or bias is None or k_cache.numel() == 0
            or not capability_at_least(x.device.index or 0, 9) or not use_tma(x, weight)
            or k_cache.stride() != v_cache.stride()):
        return None
    bn, bm, bk, warps, stages, split = skinny_config(m, weight.shape[0], k, x.device)
    if bn != head_dim or split != 1 or weight.shape[0] != 3 * num_heads * head_dim:
        return None
    q = torch.empty(m, num_heads, head_dim, dtype=x.dtype, device=x.device)
    on = pdl(x)

    def launch(stages):
        _qkv_rope_kernel[(3 * num_heads, triton.cdiv(m, bm))](
            TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, bk]),
            TensorDescriptor(weight, list(weight.shape), [weight.stride(0), 1], [bn, bk]), bias, cos, sin,
            logn if logn is not None else cos, slot_mapping, q, k_cache, v_cache, m, k, num_heads,
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), BLOCK_SIZE=k_cache.shape[1],
            HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_K=bk, HAS_LOGN=logn is not None, PDL=on, num_warps=warps,
            num_stages=stages, launch_pdl=on)

    launch_fitted(("qkv_rope", bn, bm, bk, warps, stages), stages, launch)
    return q
