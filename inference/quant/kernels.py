"""Triton kernels for int8 linears (CUDA; fp16/bf16 activations). `ops` picks tile shapes and launches them.

- `w8a16_swap_kernel`: 65-511 tokens; tensor-core GEMM with the converted weight tile as the left operand
  ("swap AB", so it can stay in registers), optional split-K (`splitk_reduce_kernel` sums the partials).
- `int8_gemm_kernel`: int8 x int8 -> int32 on tensor cores, dequantization fused into the epilogue (W8A8 from
  two tokens; one token: `gemv_kernels`).
- `dequant_weight_kernel`: int8 rows x scale -> fp16/bf16 (the prefill path hands that to cuBLAS).
- `quant_per_token_kernel` / `quant_static_kernel`: float -> int8 activations.
W8A16 at 2-64 tokens runs `decode_kernels` instead, measured faster there on an H100; one token runs
`gemv_kernels`. The activation quantization and W8A8 kernels wait for the kernel before them under programmatic
dependent launch (`inference.kernels.pdl`), as the other decode kernels do; at 2-64 tokens the int8 GEMM first
asks L2 for the start of its weight rows (`fused.l2_prefetch`).
Numerics follow `inference.quant.utils` (IEEE division, round half to even).
"""

from __future__ import annotations

import triton
import triton.language as tl

from inference.kernels.fused import l2_prefetch, pdl_wait
from inference.kernels.swap_ab import swap_ab_start


# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _rint(v):
    """Round to nearest, ties to even (torch.round), for |v| < 2^22 (larger values are clamped anyway)."""
    r = tl.floor(v + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)


@triton.jit
def w8a16_swap_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym, stride_ys,
                       HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """y^T = (q s) x^T for few tokens: the converted weight tile is the left MMA operand (it can stay in
    registers), the tokens the right one. y[s] holds float32 partials when SPLIT_K > 1."""
    pid_n, pid_k, pid_m, offs_n, offs_m, offs_k, rows_w, t0, t1, w_ptrs, x_ptrs, acc, _ = swap_ab_start(
        x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, SPLIT_K, BLOCK_N, BLOCK_M, BLOCK_K)
    for t in range(t0, t1):
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs)
        else:
            k_ok = t * BLOCK_K + offs_k < K
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0)
            x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(w.to(x.dtype), x, acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    n_ok = offs_n < N
    m_ok = offs_m < M
    out = acc * tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    y_ptrs = y_ptr + pid_k * stride_ys + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])
    else:
        tl.store(y_ptrs, out, mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def splitk_reduce_kernel(ws_ptr, b_ptr, y_ptr, MN, N, stride_s, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
    """y = sum of the split-K partials (+ bias), in y's dtype: one pass, a fixed order (deterministic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ws_ptr + s * stride_s + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def int8_gemm_kernel(a_ptr, w_ptr, cs_ptr, rs_ptr, qb_ptr, b_ptr, y_ptr, M, N, K, stride_am, stride_wn, stride_ym,
                      ROW_SCALAR: tl.constexpr, HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      PREFETCH: tl.constexpr, PDL: tl.constexpr):
    """y[m, n] = ((sum_k a[m, k] w[n, k] + qb[n]) * rs[m] * cs[n] + b[n]), int8 x int8 -> int32."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = (offs_n % N).to(tl.int64)
    l2_prefetch(w_ptr, w_rows, 0, K, stride_wn, 0, PREFETCH, 128, False)
    pdl_wait(PDL)
    a_ptrs = a_ptr + (offs_m % M).to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + w_rows[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = k0 + offs_k < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    m_ok = offs_m < M
    n_ok = offs_n < N
    if HAS_QB:
        acc += tl.load(qb_ptr + offs_n, mask=n_ok, other=0)[None, :]
    out = acc.to(tl.float32)
    if ROW_SCALAR:
        out = out * tl.load(rs_ptr)
    else:
        out = out * tl.load(rs_ptr + offs_m, mask=m_ok, other=0.0)[:, None]
    out = out * tl.load(cs_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def dequant_weight_kernel(q_ptr, s_ptr, w_ptr, K, BLOCK: tl.constexpr):
    """w[n, :] = q[n, :] * s[n] in w's dtype (the prefill path's operand for cuBLAS)."""
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    row = n.to(tl.int64) * K
    q = tl.load(q_ptr + row + offs, mask=mask, other=0).to(tl.float32)
    tl.store(w_ptr + row + offs, (q * tl.load(s_ptr + n)).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def quant_per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, GIVEN: tl.constexpr,
                            ONE_PASS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """One program per token. ONE_PASS (BLOCK >= K): the row is loaded once and kept in registers."""
    pdl_wait(PDL)
    m = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    q_row = q_ptr + m.to(tl.int64) * stride_qm
    if ONE_PASS:
        mask = offs < K
        v = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        if GIVEN:
            s = tl.load(s_ptr + m)
        else:
            a = tl.max(tl.abs(v), axis=0)
            s = tl.where(a > 0, tl.div_rn(a, 127.0), 1.0)
            tl.store(s_ptr + m, s)
        q = tl.minimum(tl.maximum(_rint(tl.div_rn(v, s)), -127.0), 127.0)
        tl.store(q_row + offs, q.to(tl.int8), mask=mask)
    else:
        if GIVEN:
            s = tl.load(s_ptr + m)
        else:
            amax = tl.zeros((BLOCK,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK):
                v = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(v))
            a = tl.max(amax, axis=0)
            s = tl.where(a > 0, tl.div_rn(a, 127.0), 1.0)
            tl.store(s_ptr + m, s)
        for k0 in range(0, K, BLOCK):
            mask = k0 + offs < K
            v = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(_rint(tl.div_rn(v, s)), -127.0), 127.0)
            tl.store(q_row + k0 + offs, q.to(tl.int8), mask=mask)


@triton.jit
def quant_static_kernel(x_ptr, q_ptr, s_ptr, o_ptr, K, stride_xm, stride_qm, HAS_OFFSET: tl.constexpr,
                         BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    s = tl.load(s_ptr)
    v = tl.load(x_ptr + m.to(tl.int64) * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.div_rn(v, s)
    if HAS_OFFSET:
        q = tl.minimum(tl.maximum(_rint(v + tl.load(o_ptr)), -128.0), 127.0)
    else:
        q = tl.minimum(tl.maximum(_rint(v), -127.0), 127.0)
    tl.store(q_ptr + m.to(tl.int64) * stride_qm + offs, q.to(tl.int8), mask=mask)


