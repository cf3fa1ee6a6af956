"""The parts that the "swap AB" decode GEMMs share (`skinny._skinny_kernel`, `quant.decode_kernels`'s W8A16
kernel, `quant.kernels.w8a16_swap_kernel`): where a program's tiles start and how a K step's tiles are loaded.
A grid is (N tiles, K splits, M tiles); the weight tile [BLOCK_N, BLOCK_K] is the left MMA operand, the tokens'
tile [BLOCK_K, BLOCK_M] the right one. These are @triton.jit functions: Triton inlines them into each kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def swap_ab_start(x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's ids, its rows of N and M, the K offsets of a tile, the weight rows it reads (wrapped into
    [0, N): the edge tile reads real rows and masks its stores), its split's K tiles [t0, t1), and the pointers
    to the first weight tile [BLOCK_N, BLOCK_K] and token tile [BLOCK_K, BLOCK_M]; then two float32 zero
    accumulators [BLOCK_N, BLOCK_M] (the second for the up rows of a gated weight)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    rows_w = (offs_n % N).to(tl.int64)
    rows_x = (offs_m % M).to(tl.int64)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = tl.minimum(t0 + per_split, k_tiles)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (t0 * BLOCK_K + offs_k)[None, :]
    x_ptrs = x_ptr + rows_x[None, :] * stride_xm + (t0 * BLOCK_K + offs_k)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    return pid_n, pid_k, pid_m, offs_n, offs_m, offs_k, rows_w, t0, t1, w_ptrs, x_ptrs, acc, acc_up


@triton.jit
def load_k_step(x_ptrs, w_ptrs, up_off, t, offs_k, K, GATED: tl.constexpr, EVEN_K: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """K step t's token tile, weight tile and (gated) the up rows' tile `up_off` elements further; past K
    (EVEN_K false) zeros. Without GATED the third value is the weight tile again (unused)."""
    if EVEN_K:
        x = tl.load(x_ptrs)
        w = tl.load(w_ptrs)
        w_up = w
        if GATED:
            w_up = tl.load(w_ptrs + up_off)
    else:
        k_ok = t * BLOCK_K + offs_k < K
        x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[None, :], other=0)
        w_up = w
        if GATED:
            w_up = tl.load(w_ptrs + up_off, mask=k_ok[None, :], other=0)
    return x, w, w_up
