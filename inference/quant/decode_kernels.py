"""Triton kernels for int8 linears at decode sizes (1-64 tokens); `decode_ops` picks tiles and launches them.

A decode step streams every weight byte once, so these kernels are built to keep the memory busy:
- int8 -> float without the conversion unit (`i8_to`): cvt from an 8-bit integer runs at 16 per clock per
  multiprocessor on Ampere/Hopper, fewer than the 13-plus int8 bytes per clock that the H100's memory
  delivers to each one, so converting with it caps an int8 GEMV near 60 % of bandwidth. Here the byte, biased
  by 128, goes into the mantissa of 2^23 (float32) or 2^10 (float16) with one integer op, and one float
  subtraction removes 2^23 + 128 (1024 + 128): exact, on the full-rate integer and float pipes.
- 1 token: GEMVs (`w8a16_gemv_kernel`, `w8a8_gemv_kernel`), each program BLOCK_N rows over K with the
  per-row scale in the epilogue; the gated form reads the gate and up rows of the merged [w2; w1] weight
  and writes silu(gate) * up, so no separate SiLU kernel runs. W8A8 quantizes the token inside every
  program (absmax, IEEE division, round half to even: the same int8 values as `utils.quantize_per_token`)
  and accumulates in int32 (exact), so no quantization kernel runs before it.
- 2-64 tokens: "swap AB" tensor-core GEMMs (`w8a16_skinny_kernel`, `w8a8_skinny_kernel`): the weight tile is
  the left operand, the tokens the right one; on Hopper the tiles come in through the TMA. Where the output
  has too few tiles for the GPU, K is split and `*_reduce_kernel` sums the partials in a fixed order.
Every kernel waits for the one before it first under programmatic dependent launch (`inference.kernels.pdl`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from inference.kernels.fused import pdl_wait
from inference.quant.kernels import _rint


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
def w8a16_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, stride_wn, HAS_BIAS: tl.constexpr,
                      GATED: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      PDL: tl.constexpr):
    """y[n] = (x . q[n]) s[n] (+ b[n]); GATED: q is [gate; up] (2N rows), y[n] = silu(gate_n) * up_n."""
    pdl_wait(PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    up_off = N * stride_wn
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ptrs = w_ptr + rows[:, None] * stride_wn + cols[None, :]
        if EVEN_K:
            x = tl.load(x_ptr + cols).to(tl.float32)
            w = tl.load(ptrs)
            if GATED:
                w_up = tl.load(ptrs + up_off)
        else:
            k_ok = cols < K
            x = tl.load(x_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(ptrs, mask=k_ok[None, :], other=0)
            if GATED:
                w_up = tl.load(ptrs + up_off, mask=k_ok[None, :], other=0)
        acc += i8_to(w, tl.float32) * x[None, :]
        if GATED:
            acc_up += i8_to(w_up, tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    if GATED:
        y = _silu(y) * (tl.sum(acc_up, axis=1) * tl.load(s_ptr + N + rows))
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def w8a8_gemv_kernel(x_ptr, w_ptr, cs_ptr, rs_ptr, o_ptr, qb_ptr, b_ptr, y_ptr, N, K, stride_wn,
                     GIVEN: tl.constexpr, HAS_OFFSET: tl.constexpr, HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr,
                     EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """One token: y[n] = ((xq . q[n]) + qb[n]) rs cs[n] + b[n] with xq the int8 token quantized here, by its own
    absmax (rs = absmax / 127, written to rs_ptr by program 0) or by the given rs_ptr[0] (and offset)."""
    pdl_wait(PDL)
    offs_k = tl.arange(0, BLOCK_K)
    if GIVEN:
        s = tl.load(rs_ptr)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v = tl.load(x_ptr + k0 + offs_k, mask=k0 + offs_k < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
        a = tl.max(amax, axis=0)
        s = tl.where(a > 0, tl.div_rn(a, 127.0), 1.0)
        if tl.program_id(0) == 0:
            tl.store(rs_ptr, s)
    if HAS_OFFSET:  # asymmetric: the full int8 range
        lo = -128.0
    else:
        lo = -127.0
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        ptrs = w_ptr + rows[:, None] * stride_wn + cols[None, :]
        if EVEN_K:
            v = tl.load(x_ptr + cols).to(tl.float32)
            w = tl.load(ptrs)
        else:
            v = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            w = tl.load(ptrs, mask=(cols < K)[None, :], other=0)
        v = tl.div_rn(v, s)
        if HAS_OFFSET:
            v += tl.load(o_ptr)
        xq = tl.minimum(tl.maximum(_rint(v), lo), 127.0).to(tl.int32)
        if not EVEN_K:
            xq = tl.where(cols < K, xq, 0)  # (an offset would make the padding nonzero)
        acc += w.to(tl.int32) * xq[None, :]
    dot = tl.sum(acc, axis=1)
    if HAS_QB:
        dot += tl.load(qb_ptr + rows)
    y = dot.to(tl.float32) * s * tl.load(cs_ptr + rows)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def w8a16_skinny_kernel(x_ptr, w_ptr, x_desc, w_desc, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn,
                        stride_ym, stride_ys, TMA: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                        SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """y^T = (q s) x^T for 2-64 tokens, the int8 tile converted in registers (`i8_to`) as the left operand.
    SPLIT_K > 1: y[pid_k] holds float32 partials, already scaled (gated: gate then up, [.., 2N])."""
    pdl_wait(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = tl.minimum(t0 + per_split, k_tiles)
    rows_w = (offs_n % N).to(tl.int64)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (t0 * BLOCK_K + offs_k)[None, :]
    x_ptrs = x_ptr + (offs_m % M).to(tl.int64)[None, :] * stride_xm + (t0 * BLOCK_K + offs_k)[:, None]
    up_off = N * stride_wn
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t0, t1):
        if TMA:
            x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K]).T
            w = w_desc.load([pid_n * BLOCK_N, t * BLOCK_K])
            if GATED:
                w_up = w_desc.load([N + pid_n * BLOCK_N, t * BLOCK_K])
        elif EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
            if GATED:
                w_up = tl.load(w_ptrs + up_off)
        else:
            k_ok = t * BLOCK_K + offs_k < K
            x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0)
            if GATED:
                w_up = tl.load(w_ptrs + up_off, mask=k_ok[None, :], other=0)
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


@triton.jit
def w8a16_reduce_kernel(ws_ptr, b_ptr, y_ptr, N, stride_s, stride_wm, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                        GATED: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """y[m] = sum of the split-K partials (+ bias; gated: silu(gate) * up), a fixed order (deterministic)."""
    pdl_wait(PDL)
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    base = ws_ptr + m * stride_wm + cols
    acc = tl.load(base, mask=ok, other=0.0)
    if GATED:
        up = tl.load(base + N, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(base + s * stride_s, mask=ok, other=0.0)
        if GATED:
            up += tl.load(base + s * stride_s + N, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if GATED:
        acc = _silu(acc) * up
    tl.store(y_ptr + m * N + cols, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _w8a8_out(acc, offs_n, offs_m, rows_w, rs_ptr, cs_ptr, qb_ptr, b_ptr, M, ROW_SCALAR: tl.constexpr,
              HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The dequantization epilogue on an int32 [n, m] tile: ((acc + qb) rs cs + b) in float32."""
    if HAS_QB:
        acc += tl.load(qb_ptr + rows_w)[:, None]
    out = acc.to(tl.float32)
    if ROW_SCALAR:
        out = out * tl.load(rs_ptr)
    else:
        out = out * tl.load(rs_ptr + offs_m, mask=offs_m < M, other=0.0)[None, :]
    out = out * tl.load(cs_ptr + rows_w)[:, None]
    if HAS_BIAS:
        out += tl.load(b_ptr + rows_w).to(tl.float32)[:, None]
    return out


@triton.jit
def w8a8_skinny_kernel(a_ptr, w_ptr, a_desc, w_desc, rs_ptr, cs_ptr, qb_ptr, b_ptr, y_ptr, M, N, K, stride_am,
                       stride_wn, stride_ym, stride_ys, TMA: tl.constexpr, ROW_SCALAR: tl.constexpr,
                       HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """y^T = q a^T on int8 tensor cores for 2-64 quantized tokens (int32, exact). SPLIT_K > 1: y[pid_k] holds
    the int32 partials and `w8a8_reduce_kernel` sums them (exact in any order) and dequantizes."""
    pdl_wait(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = tl.minimum(t0 + per_split, k_tiles)
    rows_w = (offs_n % N).to(tl.int64)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (t0 * BLOCK_K + offs_k)[None, :]
    a_ptrs = a_ptr + (offs_m % M).to(tl.int64)[None, :] * stride_am + (t0 * BLOCK_K + offs_k)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    for t in range(t0, t1):
        if TMA:
            a = a_desc.load([pid_m * BLOCK_M, t * BLOCK_K]).T
            w = w_desc.load([pid_n * BLOCK_N, t * BLOCK_K])
        elif EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = t * BLOCK_K + offs_k < K
            a = tl.load(a_ptrs, mask=k_ok[:, None], other=0)
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0)
        acc = tl.dot(w, a, acc, out_dtype=tl.int32)
        w_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
    mask = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    y_ptrs = y_ptr + pid_k * stride_ys + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    if SPLIT_K == 1:
        out = _w8a8_out(acc, offs_n, offs_m, rows_w, rs_ptr, cs_ptr, qb_ptr, b_ptr, M, ROW_SCALAR, HAS_QB, HAS_BIAS)
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, acc, mask=mask)


@triton.jit
def w8a8_reduce_kernel(ws_ptr, rs_ptr, cs_ptr, qb_ptr, b_ptr, y_ptr, M, N, stride_s, stride_wm,
                       ROW_SCALAR: tl.constexpr, HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                       BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    rows_w = tl.where(ok, cols, 0)
    base = ws_ptr + m.to(tl.int64) * stride_wm + cols
    acc = tl.load(base, mask=ok, other=0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(base + s * stride_s, mask=ok, other=0)
    offs_m = m + tl.arange(0, 1)
    out = _w8a8_out(acc[:, None], cols, offs_m, rows_w, rs_ptr, cs_ptr, qb_ptr, b_ptr, M, ROW_SCALAR, HAS_QB,
                    HAS_BIAS)
    tl.store(y_ptr + m.to(tl.int64) * N + cols, tl.reshape(out, (BLOCK,)).to(y_ptr.dtype.element_ty), mask=ok)
