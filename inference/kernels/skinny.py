"""Decode matmuls for a few tokens (2..64 rows) as Triton tensor-core GEMMs: y = x W^T (+ b), or
silu(x W_gate^T) * (x W_up^T) from the fused [gate; up] weight in one pass.

A decode step at batch 16 or 64 still streams every weight once, so it is bound by memory, like batch 1.
The weight tile is the left MMA operand ("swap AB": y^T = W x^T), so a tile is 64-128 weight rows by the
16-64 tokens, and the tokens' activations, a few hundred KB, stay in L2. Where the output has too few
tiles to fill the GPU, K is split and `_reduce_kernel` sums the float32 partials in a fixed order (so
results do not change from run to run) and applies the bias and SiLU gate. On Hopper the tiles come in
through the TMA (`_skinny_tma_kernel`), which is faster than per-thread copies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources
from triton.tools.tensor_descriptor import TensorDescriptor

from inference.kernels import capability_at_least, num_sms, pdl
from inference.kernels.fused import add_rmsnorm, add_rmsnorm_row, pdl_wait
from inference.kernels.swap_ab import load_k_step, swap_ab_start

_FITS: dict[tuple, int] = {}  # configs whose pipeline did not fit in shared memory -> the stages that did
SMEM_BYTES = 220 * 1024  # the pipelined tiles of one program stay under this (Hopper: 227 KB per block)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, best_ptr, M, N, K, stride_xm, stride_wn, stride_ym, stride_ys,
                   HAS_BIAS: tl.constexpr, GATED: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
                   ARGMAX: tl.constexpr):
    pdl_wait(PDL)
    pid_n, pid_k, pid_m, offs_n, offs_m, offs_k, rows_w, t0, t1, w_ptrs, x_ptrs, acc, acc_up = swap_ab_start(
        x_ptr, w_ptr, M, N, K, stride_xm, stride_wn, SPLIT_K, BLOCK_N, BLOCK_M, BLOCK_K)
    up_off = N * stride_wn
    for t in range(t0, t1):
        x, w, w_up = load_k_step(x_ptrs, w_ptrs, up_off, t, offs_k, K, GATED, EVEN_K, BLOCK_K)
        acc = tl.dot(w, x, acc)
        if GATED:
            acc_up = tl.dot(w_up, x, acc_up)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    _store(acc, acc_up, b_ptr, y_ptr, best_ptr, M, N, stride_ym, stride_ys, pid_n, pid_k, pid_m, HAS_BIAS, GATED,
           SPLIT_K, BLOCK_N, BLOCK_M, ARGMAX)


@triton.jit
def _skinny_tma_kernel(x_desc, w_desc, b_ptr, y_ptr, best_ptr, M, N, K, stride_ym, stride_ys,
                       HAS_BIAS: tl.constexpr, GATED: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr, ARGMAX: tl.constexpr):
    """`_skinny_kernel` with its tiles brought in by the Hopper tensor memory accelerator (TMA): one
    instruction per tile instead of a 16-byte copy per thread, zero fill past the edges (no masks)."""
    pdl_wait(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = tl.minimum(t0 + per_split, k_tiles)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t0, t1):
        x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K])
        acc = tl.dot(w_desc.load([pid_n * BLOCK_N, t * BLOCK_K]), x.T, acc)
        if GATED:
            acc_up = tl.dot(w_desc.load([N + pid_n * BLOCK_N, t * BLOCK_K]), x.T, acc_up)
    _store(acc, acc_up, b_ptr, y_ptr, best_ptr, M, N, stride_ym, stride_ys, pid_n, pid_k, pid_m, HAS_BIAS, GATED,
           SPLIT_K, BLOCK_N, BLOCK_M, ARGMAX)


@triton.jit
def _store(acc, acc_up, b_ptr, y_ptr, best_ptr, M, N, stride_ym, stride_ys, pid_n, pid_k, pid_m,
           HAS_BIAS: tl.constexpr, GATED: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_M: tl.constexpr, ARGMAX: tl.constexpr):
    """The epilogue: y^T tile (+ bias, SiLU gate) into y, or float32 partials of split K into the workspace.
    ARGMAX (unsplit): also each token's largest value in this tile, as stored, and its first column, into
    best [M, 2 * tiles] (values, then columns as float32 bits), for `step_io.argmax_finish`."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    y_ptrs = y_ptr + pid_k * stride_ys + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
        if GATED:
            acc = acc / (1.0 + tl.exp(-acc)) * acc_up
        out = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptrs, out, mask=mask)
        if ARGMAX:
            v = tl.where(mask, out.to(tl.float32), -float("inf"))
            best = tl.max(v, 0)
            first = tl.min(tl.where(v == best[None, :], offs_n[:, None], 2147483647), 0)
            tiles = tl.num_programs(0)
            row = best_ptr + offs_m.to(tl.int64) * (2 * tiles) + pid_n
            tl.store(row, best, mask=offs_m < M)
            tl.store(row + tiles, first.to(tl.float32, bitcast=True), mask=offs_m < M)
    else:  # float32 partials; the gated form keeps gate and up side by side ([.., N] and [.., N:2N])
        tl.store(y_ptrs, acc, mask=mask)
        if GATED:
            tl.store(y_ptrs + N, acc_up, mask=mask)


@triton.jit
def _reduce_kernel(ws_ptr, b_ptr, y_ptr, N, stride_s, stride_wm, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                   GATED: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
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
        acc = acc / (1.0 + tl.exp(-acc)) * up
    tl.store(y_ptr + m * N + cols, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _reduce_norm_kernel(ws_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, N, eps, stride_s, stride_wm,
                        SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """`_reduce_kernel` for a row-parallel output followed by the residual add + RMSNorm: one program per
    row sums the partials, then does `add_rmsnorm`'s work on that row (`add_rmsnorm_row`: same roundings)."""
    pdl_wait(PDL)
    m = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    base = ws_ptr + m * stride_wm + cols
    acc = tl.load(base, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(base + s * stride_s, mask=ok, other=0.0)
    add_rmsnorm_row(acc.to(out_ptr.dtype.element_ty), res_ptr, w_ptr, out_ptr, res_out_ptr, m, cols, ok, N, eps, True)


def launch_fitted(key: tuple, stages: int, launch) -> None:
    """launch(stages), with fewer pipeline stages where this GPU's shared memory does not hold them (down to
    one); the stages that fit are kept per config in `_FITS`, so later calls go straight to them."""
    stages = _FITS.get(key, stages)
    while True:
        try:
            return launch(stages)
        except OutOfResources:  # this GPU has less shared memory than the estimate allowed for
            if stages <= 1:
                raise
            stages = _FITS[key] = stages - 1


def use_tma(*tensors: torch.Tensor) -> bool:
    """Tiles through the TMA (Hopper and newer) where every operand meets its 16-byte alignment of base and
    row stride."""
    x = tensors[0]
    return (x.is_cuda and capability_at_least(x.device.index or 0, 9)
            and all(t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 and t.stride(1) == 1
                    for t in tensors))


def skinny_config(m: int, n: int, k: int, device: torch.device, gated: bool = False
                  ) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_N, BLOCK_M, BLOCK_K, num_warps, num_stages, SPLIT_K), chosen per 7B decode shape by timing
    the tiles inside the whole decode step (a shape timed alone ranks them differently). K is also split
    where the output has fewer tiles than a quarter of the multiprocessors (tensor parallel shards).
    c_attn's 128-row tile is one head, which `qkv_rope` relies on."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    if n >= 32768:  # lm_head
        bn, bk, stages, split = 128, 128, 4 if bm == 16 else 3, 1
    elif k > 2 * n:  # a tall K (mlp.c_proj)
        bn, bk, stages, split = (64, 256, 5, 2) if bm == 16 else (64, 128, 6, 2)
    elif n <= 4096:  # attn.c_proj
        bn, bk, stages, split = (64, 256, 3, 2) if bm == 16 else (64, 128, 6, 2)
    elif gated:  # w2_w1: two weight tiles a stage; at 9-16 tokens two programs a multiprocessor
        bn, bk, stages, split = (64, 128, 3, 1) if 8 < m <= 16 else (128, 64, 4 if bm == 16 else 5, 1)
    else:  # c_attn
        bn, bk, stages, split = 128, 128, 4, 1
    while stages > 2 and ((2 if gated else 1) * bn + bm) * bk * 2 * stages > SMEM_BYTES:  # gated: 2 weight tiles
        stages -= 1
    sms = num_sms(device.index or 0)
    while triton.cdiv(n, bn) * triton.cdiv(m, bm) * split < sms // 4 and split < 8 and triton.cdiv(k, bk) >= 4 * split:
        split *= 2
    return bn, bm, bk, 4, stages, split


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False,
                config=None, tma: bool | None = None, norm=None, argmax: bool = False):
    """x [M, K], weight [N, K] -> [M, N]; gated: weight is [gate; up] of 2N rows and the result is
    silu(x gate^T) * (x up^T), [M, N]. `config` overrides `skinny_config`, `tma` overrides `use_tma`
    (the tests run every path). norm = (residual, norm weight, eps): returns (rmsnorm(y + residual) * weight,
    y + residual) as `add_rmsnorm` does; where K is split, the reduce kernel does it (one kernel fewer).
    argmax: returns (y, best), best [M, 2 * tiles] each tile's largest value of each row and its first
    column (`step_io.argmax_finish` takes the row's argmax from it); best is None where K is split or the
    weight gated (no such partials there)."""
    if (gated or bias is not None) and norm is not None:
        raise ValueError("skinny_gemm: the fused norm takes a plain weight (no bias, not gated)")
    if gated and bias is not None:
        raise ValueError("skinny_gemm: a gated weight takes no bias")
    if argmax and norm is not None:
        raise ValueError("skinny_gemm: the argmax partials are for logits, not a normed output")
    x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    if m == 0:  # nothing to compute, nothing launched (a TMA descriptor cannot have a zero extent)
        y = torch.empty(0, n, dtype=x.dtype, device=x.device)
        return (y, torch.empty_like(y)) if norm is not None else (y, None) if argmax else y
    bn, bm, bk, warps, stages, split = config or skinny_config(m, n, k, x.device, gated)
    on = pdl(x)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    tma = use_tma(x, weight) if tma is None else tma
    out = y if split == 1 else torch.empty(split, m, 2 * n if gated else n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, bn), split, triton.cdiv(m, bm))
    b = bias if bias is not None else weight
    partials = argmax and split == 1 and not gated
    best = torch.empty(m, 2 * grid[0], dtype=torch.float32, device=x.device) if partials else y
    flags = dict(HAS_BIAS=bias is not None, GATED=gated, SPLIT_K=split, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk,
                 num_warps=warps, PDL=on, launch_pdl=on, ARGMAX=partials)

    def launch(stages):
        if tma:
            _skinny_tma_kernel[grid](
                TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, bk]),
                TensorDescriptor(weight, list(weight.shape), [weight.stride(0), 1], [bn, bk]), b, out, best, m, n, k,
                out.stride(-2), out.stride(0) if split > 1 else 0, num_stages=stages, **flags)
        else:
            _skinny_kernel[grid](
                x, weight, b, out, best, m, n, k, x.stride(0), weight.stride(0), out.stride(-2),
                out.stride(0) if split > 1 else 0, EVEN_K=k % bk == 0, num_stages=stages, **flags)

    launch_fitted((bn, bm, bk, warps, stages, split, gated, tma), stages, launch)
    if norm is not None and split == 1:
        return add_rmsnorm(y, *norm)
    if norm is not None:
        residual, nw, eps = norm
        res_out = torch.empty_like(y)
        _reduce_norm_kernel[(m,)](out, residual.contiguous(), nw, y, res_out, n, eps, out.stride(0), out.stride(1),
                                  SPLIT_K=split, BLOCK=triton.next_power_of_2(n), num_warps=8, PDL=on, launch_pdl=on)
        return y, res_out  # y (unused by the split matmul, which wrote the workspace) holds the norm
    if split > 1:
        block = 1024
        _reduce_kernel[(m, triton.cdiv(n, block))](
            out, bias if bias is not None else out, y, n, out.stride(0), out.stride(1), SPLIT_K=split,
            HAS_BIAS=bias is not None, GATED=gated, BLOCK=block, num_warps=4, PDL=on, launch_pdl=on)
    return (y, best if partials else None) if argmax else y
