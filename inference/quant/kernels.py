"""Triton kernels for int8 linears (CUDA; fp16/bf16 activations). No autotuning: block shapes come from
fixed heuristics, so the first call compiles once per shape class and CUDA-graph capture never benchmarks.

- `w8a16_linear`: y = x (q s)^T + b with int8 q dequantized in registers. One token: a GEMV kernel
  (each program reduces BLOCK_N rows over K). More tokens: a tiled tensor-core GEMM (split-K when the
  tile grid is too small to fill the GPU).
- `quantize_per_token` / `quantize_static`: float -> int8 activations (per-token scales computed in
  the same kernel, or given).
- `int8_linear`: y = ((xq wq^T + quant_bias) * row_scale * col_scale + b), int8 tensor cores through the
  same tiled GEMM with an int32 accumulator and the dequantization fused into its epilogue.
Numerics follow `inference.quant.utils` (IEEE division, round half to even) so the CPU reference and
these kernels agree up to float summation order.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

GEMV_MAX_M = 1  # tokens served by the GEMV kernel; more go to the tensor-core GEMM


@functools.cache
def _num_sms(index: int) -> int:
    if not torch.cuda.is_available():  # the Triton interpreter (TRITON_INTERPRET=1) on the CPU
        return 4
    return torch.cuda.get_device_properties(index).multi_processor_count


# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _rint(v):
    """Round to nearest, ties to even (torch.round), for |v| < 2^22 (larger values are clamped anyway)."""
    r = tl.floor(v + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)


@triton.jit
def _w8a16_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                       HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    rows = tl.where(n_mask, offs_n, 0).to(tl.int64)
    w_ptrs = w_ptr + rows[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + m * stride_xm + offs_k
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            xv = tl.load(x_ptrs)
            wv = tl.load(w_ptrs)
        else:
            k_mask = offs_k + k0 < K
            xv = tl.load(x_ptrs, mask=k_mask, other=0.0)
            wv = tl.load(w_ptrs, mask=k_mask[None, :], other=0)
        acc += wv.to(tl.float32) * xv.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemm_kernel(a_ptr, w_ptr, cs_ptr, rs_ptr, qb_ptr, b_ptr, y_ptr, M, N, K, stride_am, stride_wn, stride_ym,
                 stride_ys, A_INT8: tl.constexpr, ROW_SCALE: tl.constexpr, ROW_SCALAR: tl.constexpr,
                 HAS_QB: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """y[m, n] = epilogue(sum_k a[m, k] w[n, k]); a float (w converted) or int8 (int32 accumulator).

    SPLIT_K > 1: program (tile, s) writes its scaled partial sum to y[s] (float32); the caller sums them
    and adds the bias. quant_bias is added by split 0 only.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
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
    rows_a = (offs_m % M).to(tl.int64)
    rows_w = (offs_n % N).to(tl.int64)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = min(t0 + per_split, k_tiles)
    a_ptrs = a_ptr + rows_a[:, None] * stride_am + (t0 * BLOCK_K + offs_k)[None, :]
    w_ptrs = w_ptr + rows_w[None, :] * stride_wn + (t0 * BLOCK_K + offs_k)[:, None]
    if A_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(t0, t1):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = t * BLOCK_K + offs_k < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
        if A_INT8:
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    m_ok = offs_m < M
    n_ok = offs_n < N
    if HAS_QB:
        qb = tl.load(qb_ptr + offs_n, mask=n_ok & (pid_k == 0), other=0)
        acc += qb[None, :]
    out = acc.to(tl.float32)
    if ROW_SCALE:
        if ROW_SCALAR:
            out = out * tl.load(rs_ptr)
        else:
            out = out * tl.load(rs_ptr + offs_m, mask=m_ok, other=0.0)[:, None]
    out = out * tl.load(cs_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    y_ptrs = y_ptr + pid_k * stride_ys + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    else:
        tl.store(y_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _quant_per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, GIVEN: tl.constexpr,
                            BLOCK: tl.constexpr):
    m = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + m.to(tl.int64) * stride_xm
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
    q_row = q_ptr + m.to(tl.int64) * stride_qm
    for k0 in range(0, K, BLOCK):
        mask = k0 + offs < K
        v = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        q = _rint(tl.div_rn(v, s))
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(q_row + k0 + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _quant_static_kernel(x_ptr, q_ptr, s_ptr, o_ptr, K, stride_xm, stride_qm, HAS_OFFSET: tl.constexpr,
                         BLOCK: tl.constexpr):
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


# ---------------------------------------------------------------------------------------------------------
def _tile_config(m: int, a_int8: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by the number of tokens."""
    if m <= 64:
        bm = 16 if m <= 16 else 32 if m <= 32 else 64
        return bm, 64, 256 if a_int8 else 128, 4, 4
    bk = 128 if a_int8 else 64
    if m <= 128:
        return 64, 128, bk, 4, 4
    return 128, 128, bk, 8, 3


def _split_k(m: int, n: int, k: int, bm: int, bn: int, bk: int, device: torch.device) -> int:
    if m > 64:
        return 1
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    target = 2 * _num_sms(device.index or 0)
    split = 1
    while tiles * split < target and split < 8 and triton.cdiv(k, bk) >= 8 * split:
        split *= 2
    return split


def _gemm(a: torch.Tensor, w: torch.Tensor, col_scale: torch.Tensor, row_scale, quant_bias, bias,
          out_dtype: torch.dtype) -> torch.Tensor:
    m, k = a.shape
    n = w.shape[0]
    a_int8 = a.dtype == torch.int8
    bm, bn, bk, warps, stages = _tile_config(m, a_int8)
    split = _split_k(m, n, k, bm, bn, bk, a.device)
    if split == 1:
        y = torch.empty(m, n, dtype=out_dtype, device=a.device)
        stride_ys = 0
    else:
        y = torch.empty(split, m, n, dtype=torch.float32, device=a.device)
        stride_ys = y.stride(0)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), split)
    dummy = col_scale
    _gemm_kernel[grid](
        a, w, col_scale, row_scale if row_scale is not None else dummy,
        quant_bias if quant_bias is not None else dummy, bias if bias is not None else dummy, y,
        m, n, k, a.stride(0), w.stride(0), y.stride(-2), stride_ys,
        A_INT8=a_int8, ROW_SCALE=row_scale is not None,
        ROW_SCALAR=row_scale is not None and row_scale.numel() == 1,
        HAS_QB=quant_bias is not None, HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=k % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    if split == 1:
        return y
    out = y.sum(0)
    if bias is not None:
        out += bias.float()
    return out.to(out_dtype)


def w8a16_linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None) -> torch.Tensor:
    """x [m, k] fp16/bf16, w [n, k] int8, scale [n] float32, bias [n] or None -> [m, n] in x.dtype."""
    x = x.contiguous()
    m, k = x.shape
    n = w.shape[0]
    if m <= GEMV_MAX_M:
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        bn, bk = 16, 256
        grid = (m, triton.cdiv(n, bn))
        _w8a16_gemv_kernel[grid](x, w, scale, bias if bias is not None else scale, y, n, k, x.stride(0),
                                 w.stride(0), y.stride(0), HAS_BIAS=bias is not None, EVEN_K=k % bk == 0,
                                 BLOCK_N=bn, BLOCK_K=bk, num_warps=4)
        return y
    return _gemm(x, w, scale, None, None, bias, x.dtype)


def quantize_per_token(x: torch.Tensor, scale: torch.Tensor | None = None):
    """int8 [m, k] and float32 [m] per-token scales (computed here, or `scale` given)."""
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    s = scale.float().contiguous() if scale is not None else torch.empty(m, dtype=torch.float32, device=x.device)
    _quant_per_token_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), GIVEN=scale is not None, BLOCK=1024,
                                  num_warps=4)
    return q, s


def quantize_static(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    block = 1024
    _quant_static_kernel[(m, triton.cdiv(k, block))](
        x, q, scale, offset if offset is not None else scale, k, x.stride(0), q.stride(0),
        HAS_OFFSET=offset is not None, BLOCK=block, num_warps=4)
    return q


def int8_linear(xq: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
                quant_bias=None, bias=None, out_dtype=torch.float16) -> torch.Tensor:
    """((xq w^T + quant_bias) * row_scale[m] * col_scale[n] + bias) in out_dtype; row_scale [m] or [1]."""
    return _gemm(xq, w, col_scale, row_scale.float(), quant_bias, bias, out_dtype)
