"""Fused elementwise kernels for CUDA: residual add + RMSNorm, rotary (+ logn) + KV-cache store, SiLU gate."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inference.kernels import pdl


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """A decode kernel's first step under programmatic dependent launch (`inference.kernels.pdl`): wait for
    the kernel before (its writes visible), then let the next one launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def l2_prefetch(w_ptr, rows, k0, K, stride_w, up, LINES: tl.constexpr, LINE: tl.constexpr, GATED: tl.constexpr):
    """Before `pdl_wait`: ask L2 for LINES 128-byte lines (LINE elements each) from column k0 of each weight row
    `rows` and, GATED, of the rows `up` elements further. A weight never depends on the kernel before, so it
    streams while the program waits; columns past the row's end read its last element instead."""
    if LINES > 0:
        cols = tl.minimum(k0 + tl.arange(0, LINES) * LINE, K - 1)
        p = w_ptr + rows[:, None] * stride_w + cols[None, :]
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [p], dtype=tl.int32, is_pure=False, pack=1)
        if GATED:
            tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [p + up], dtype=tl.int32,
                                      is_pure=False, pack=1)


@triton.jit
def add_rmsnorm_row(x, res_ptr, w_ptr, out_ptr, res_out_ptr, row, cols, mask, n, eps, HAS_RES: tl.constexpr):
    """Row `row` of n columns, x already loaded (`cols`, `mask`): with HAS_RES, x + residual (rounded to x's
    dtype) into res_out; then the RMSNorm of that times the weight into out. Shared with skinny.py's
    split-K reduce, so the fused and the separate norm round alike."""
    if HAS_RES:
        x = x + tl.load(res_ptr + row * n + cols, mask=mask, other=0.0)
        tl.store(res_out_ptr + row * n + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rms = tl.rsqrt(tl.sum(xf * xf, 0) / n + eps)
    y = (xf * rms).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * n + cols, y * w, mask=mask)


@triton.jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, eps, HAS_RES: tl.constexpr,
                        BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0)
    add_rmsnorm_row(x, res_ptr, w_ptr, out_ptr, res_out_ptr, row, cols, mask, n, eps, HAS_RES)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """(norm(x + residual), x + residual); the sum is rounded to x's dtype first, as the eager path does."""
    x = x.contiguous()
    t, n = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    _add_rmsnorm_kernel[(t,)](x, residual if residual is not None else x, weight, out, res_out, n, eps,
                              HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(n), num_warps=8, PDL=pdl(x),
                              launch_pdl=pdl(x))
    return out, res_out


@triton.jit
def rotate(x1, x2, c1, c2, s1, s2):
    """The rotary pair (x1, x2) by (cos, sin) halves, in float32, as explicit FMAs: the compiler contracts
    plain multiply-adds as it likes, and `_rope_store_kernel` and qkv_rope.py's fused epilogue, which both
    call this, must give the same bits."""
    return tl.fma(x1, c1, -(x2 * s1)), tl.fma(x2, c2, x1 * s2)


@triton.jit
def _rope_store_kernel(qkv_ptr, cos_ptr, sin_ptr, logn_ptr, slot_ptr, q_out_ptr, k_out_ptr, k_cache_ptr,
                       v_cache_ptr, num_heads, stride_cb, stride_cs, stride_ch, BLOCK_SIZE: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, HAS_LOGN: tl.constexpr, STORE: tl.constexpr,
                       PDL: tl.constexpr):
    """Token t, heads [BLOCK_H * pid1, ...): each head's two halves as [BLOCK_H, HEAD_DIM / 2] tiles (16-byte
    loads along the head dimension), one cos/sin row for all of them."""
    pdl_wait(PDL)
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    half: tl.constexpr = HEAD_DIM // 2
    i = tl.arange(0, half)[None, :]
    ok = (heads < num_heads)[:, None]
    hid = num_heads * HEAD_DIM
    src = qkv_ptr + t * 3 * hid + heads[:, None] * HEAD_DIM + i
    c1 = tl.load(cos_ptr + t * HEAD_DIM + i).to(tl.float32)
    c2 = tl.load(cos_ptr + t * HEAD_DIM + half + i).to(tl.float32)
    s1 = tl.load(sin_ptr + t * HEAD_DIM + i).to(tl.float32)
    s2 = tl.load(sin_ptr + t * HEAD_DIM + half + i).to(tl.float32)
    q1 = tl.load(src, mask=ok).to(tl.float32)
    q2 = tl.load(src + half, mask=ok).to(tl.float32)
    k1 = tl.load(src + hid, mask=ok).to(tl.float32)
    k2 = tl.load(src + hid + half, mask=ok).to(tl.float32)
    qr1, qr2 = rotate(q1, q2, c1, c2, s1, s2)
    kr1, kr2 = rotate(k1, k2, c1, c2, s1, s2)
    kr1, kr2 = kr1.to(k_out_ptr.dtype.element_ty), kr2.to(k_out_ptr.dtype.element_ty)
    if HAS_LOGN:
        g = tl.load(logn_ptr + t)
        qr1 = qr1.to(q_out_ptr.dtype.element_ty).to(tl.float32) * g
        qr2 = qr2.to(q_out_ptr.dtype.element_ty).to(tl.float32) * g
    dst = t * hid + heads[:, None] * HEAD_DIM + i
    tl.store(q_out_ptr + dst, qr1.to(q_out_ptr.dtype.element_ty), mask=ok)
    tl.store(q_out_ptr + dst + half, qr2.to(q_out_ptr.dtype.element_ty), mask=ok)
    tl.store(k_out_ptr + dst, kr1, mask=ok)
    tl.store(k_out_ptr + dst + half, kr2, mask=ok)
    if STORE:
        slot = tl.load(slot_ptr + t)
        if slot >= 0:
            cache = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + heads[:, None] * stride_ch + i
            v1 = tl.load(src + 2 * hid, mask=ok)
            v2 = tl.load(src + 2 * hid + half, mask=ok)
            tl.store(k_cache_ptr + cache, kr1, mask=ok)
            tl.store(k_cache_ptr + cache + half, kr2, mask=ok)
            tl.store(v_cache_ptr + cache, v1, mask=ok)
            tl.store(v_cache_ptr + cache + half, v2, mask=ok)


def rope_and_store(qkv, cos, sin, logn, k_cache, v_cache, slot_mapping, num_heads, head_dim):
    """qkv [T, 3*H*D] -> rotated q, k [T, H, D]; writes k and v into the cache slots (slot < 0: skipped).
    The caches are [blocks, slots, heads, dim] views of any strides (the last one 1). A program takes 16
    heads of a token at prefill sizes (fewer, fuller programs), one head at decode sizes (more programs
    for few tokens)."""
    t = qkv.shape[0]
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty_like(q)
    store = k_cache.numel() > 0
    if store and k_cache.stride() != v_cache.stride():
        raise ValueError("K and V caches must share one layout")
    strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)) if store else (0, 0, 0)
    block_h = 1 if t <= 64 else min(triton.next_power_of_2(num_heads), 16)
    _rope_store_kernel[(t, triton.cdiv(num_heads, block_h))](
        qkv, cos, sin, logn if logn is not None else cos, slot_mapping, q, k,
        k_cache if store else q, v_cache if store else q, num_heads, *strides,
        BLOCK_SIZE=k_cache.shape[1] if store else 1, HEAD_DIM=head_dim, BLOCK_H=block_h, HAS_LOGN=logn is not None,
        STORE=store, num_warps=max(1, block_h * head_dim // 512), PDL=pdl(qkv), launch_pdl=pdl(qkv))
    return q, k


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    g = tl.load(x_ptr + row * 2 * n + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * 2 * n + n + cols, mask=mask, other=0.0)
    act = (g / (1.0 + tl.exp(-g))).to(u.dtype)
    tl.store(out_ptr + row * n + cols, act * u, mask=mask)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2F] = [gate | up] -> silu(gate) * up, [T, F]."""
    t, two_n = x.shape
    n = two_n // 2
    out = torch.empty(t, n, dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(n, block))](x, out, n, BLOCK=block, num_warps=4, PDL=pdl(x), launch_pdl=pdl(x))
    return out
