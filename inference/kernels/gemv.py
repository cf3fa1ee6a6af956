"""Batch-1 decode matmuls as Triton GEMVs: y = W x (+ b), or silu(W_gate x) * (W_up x) in one pass.

At batch 1 a decode step is a stream of weight bytes. Each program owns BLOCK_N output rows and walks K
in BLOCK_K chunks with an fp32 accumulator; the gated form reads the gate and up rows of the fused
[gate; up] weight in the same program, so SiLU-and-multiply needs no extra kernel or round trip; at
batch 1 this beats cuBLAS (docs/performance.md). Batches of 2-64 rows go through `skinny.py` (tensor
cores). Tuned configs are cached on disk by Triton (`cache_results`).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from inference.kernels import pdl
from inference.kernels.fused import pdl_wait

_BENCH = functools.partial(triton.testing.do_bench, warmup=5, rep=25)
# Candidates of 2 rows a program only: timed alone, wider-row tiles can win, but inside the engine's step
# they are slower (docs/performance.md, levers).
CONFIGS = [triton.Config({"BLOCK_N": 2, "BLOCK_K": bk}, num_warps=w, num_stages=s)
           for bk, w, s in ((2048, 8, 3), (1024, 4, 3), (1024, 4, 4))]


@triton.autotune(configs=CONFIGS, key=["N", "K", "GATED"], do_bench=_BENCH, cache_results=True)
@triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_w, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows = tl.where(rmask, rows, 0).to(tl.int64)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ptrs = w_ptr + rows[:, None] * stride_w + cols[None, :]
        if EVEN_K:
            x = tl.load(x_ptr + cols).to(tl.float32)
            w = tl.load(ptrs)
            if GATED:
                w_up = tl.load(ptrs + N * stride_w)
        else:
            cmask = cols < K
            x = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            w = tl.load(ptrs, mask=cmask[None, :], other=0.0)
            if GATED:
                w_up = tl.load(ptrs + N * stride_w, mask=cmask[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
        if GATED:
            acc_up += w_up.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    if GATED:
        y = y / (1.0 + tl.exp(-y)) * tl.sum(acc_up, 1)
    out_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + out_rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False
         ) -> torch.Tensor:
    """x [1, K], weight [N, K] (row stride may exceed K) -> [1, N]; gated: weight is [gate; up] of 2N
    rows and the result is silu(gate x) * (up x), [1, N/2]."""
    n, k = weight.shape
    if gated:
        n //= 2
    x = x.contiguous()
    if x.shape[0] == 0:  # no row: an empty result, nothing launched
        return torch.empty(0, n, dtype=x.dtype, device=x.device)
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _gemv_kernel[grid](x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
                       HAS_BIAS=bias is not None, GATED=gated, PDL=pdl(x), launch_pdl=pdl(x))
    return y

