"""Triton kernels for W8A16 linears at 2-64 tokens; `decode_ops` picks tiles and launches them. They measured
faster there on an H100 than `kernels.w8a16_swap_kernel` (one token stays on `kernels.w8a16_gemv_kernel`, and
W8A8 on `kernels.int8_gemm_kernel`, which measured faster at those sizes).

A decode step streams every weight byte once, so these kernels are built to keep the memory busy:
- int8 -> float without the conversion unit (`i8_to`): cvt from an 8-bit integer runs at 16 per clock per
  multiprocessor on Ampere/Hopper, fewer than the 13-plus int8 bytes per clock that the H100's memory
  delivers to each one, so converting with it caps an int8 kernel near 60 % of bandwidth. Here the byte, biased
  by 128, goes into the mantissa of 2^23 (float32) or 2^10 (float16) with one integer op, and one float
  subtraction removes 2^23 + 128 (1024 + 128): exact, on the full-rate integer and float pipes.
- `w8a16_skinny_kernel`: a "swap AB" tensor-core GEMM: the weight tile is the left operand, the tokens the
  right one; on Hopper the tiles come in through the TMA. The gated form reads the gate and up rows of the
  merged [w2; w1] weight and writes silu(gate) * up, so no separate SiLU kernel runs. Where the output has too
  few tiles for the GPU, K is split and `w8a16_reduce_kernel` (the fp16 path's `skinny._reduce_kernel`: the
  same sum of float32 partials) adds them up in a fixed order. The start of a program and the loads of a K step
  are `inference.kernels.swap_ab`'s, which the fp16 skinny kernel shares.
Every kernel waits for the one before it first under programmatic dependent launch (`inference.kernels.pdl`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from inference.kernels.fused import pdl_wait
from inference.kernels.skinny import _reduce_kernel as w8a16_reduce_kernel  # noqa: F401 (the same sum)
from inference.kernels.swap_ab import load_k_step, swap_ab_start


@triton.jit
def i8_to(w, DT: tl.constexpr):
    """int8 tensor -> DT (float32, float16 or bfloat16), exact, with integer and float ops only."""
    if DT == tl.float16:
        return (((w.to(tl.int16) & 0xFF) ^ 0x6480).to(tl.float16, bitcast=True) - 1152.0).to(tl.float16)
    f = ((w.to(tl.int32) & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    return f.to(DT)  # float32, or bfloat16 (exact: 8 bits fit its mantissa; F2F packs two a cvt)


@triton.jit
def _silu(v):
    return v / (1.0 + tl.exp(-v))


@triton.jit
def w8a16_skinny_kernel(x_ptr, w_ptr, x_desc, w_desc, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn,
                        stride_ym, stride_ys, TMA: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                        SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """y^T = (q s) x^T for 2-64 tokens, the int8 tile converted in registers (`i8_to`) as the left operand.
    SPLIT_K > 1: y[pid_k] holds float32 partials, already scaled (gated: gate then up, [.., 2N])."""
    pdl_wait(PDL)
    pid_n, pid_k, pid_m, offs_n, offs_m, offs_k, rows_w, t0, t1, w_ptrs, x_ptrs, acc, acc_up = swap_ab_start(
        x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, SPLIT_K, BLOCK_N, BLOCK_M, BLOCK_K)
    up_off = N * stride_wn
    for t in range(t0, t1):
        if TMA:
            x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K]).T
            w = w_desc.load([pid_n * BLOCK_N, t * BLOCK_K])
            if GATED:
                w_up = w_desc.load([N + pid_n * BLOCK_N, t * BLOCK_K])
        else:
            x, w, w_up = load_k_step(x_ptrs, w_ptrs, up_off, t, offs_k, K, GATED, EVEN_K, BLOCK_K)
        acc = tl.dot(i8_to(w, x.dtype), x, acc)
        if GATED:
            acc_up = tl.dot(i8_to(w_up, x.dtype), x, acc_up)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    n_ok = offs_n < N
    mask = n_ok[:, None] & (offs_m < M)[None, :]
    acc = acc * tl.load(s_ptr + rows_w)[:, None]
    if GATED:
        acc_up = acc_up * tl.load(s_ptr + N + rows_w)[:, None]
    y_ptrs = y_ptr + pid_k * stride_ys + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows_w).to(tl.float32)[:, None]
        if GATED:
            acc = _silu(acc) * acc_up
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, acc, mask=mask)
        if GATED:
            tl.store(y_ptrs + N, acc_up, mask=mask)
