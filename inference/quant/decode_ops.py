"""Launcher for the decode-size W8A16 kernel (`decode_kernels`): 2-64 tokens, the swap-AB tensor-core GEMM (TMA
on Hopper, split K where the output has too few tiles), optionally gated (silu(gate) * up of a merged [gate; up]
weight). It measured faster there on an H100 than `ops`' swap GEMM; one token stays on `ops`' GEMV and W8A8 on
`ops.int8_linear`, which measured faster at those sizes.

Fixed tiles, no autotuning: a shape compiles once and CUDA-graph capture never benchmarks. 64 weight rows by
the 16-64 tokens by 128 along K (converted to fp16 in registers, which bounds the tile); K is split (2 or 4
ways) towards two programs a multiprocessor and the float32 partials are summed in a fixed order.
`config` arguments override the table (the GPU tests run every branch; `.carry` benchmarks compare tiles).
"""

from __future__ import annotations

import torch
import triton

from inference.kernels import num_sms, pdl
from inference.kernels.skinny import use_tma
from inference.quant.decode_kernels import w8a16_reduce_kernel, w8a16_skinny_kernel

DECODE_MAX_M = 64  # the most tokens served here (2 the least)
SMEM_BYTES = 200 * 1024  # a program's pipelined tiles stay under this (Hopper: 227 KB a block)


def bucket(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def skinny_config(m: int, n: int, k: int, device: torch.device) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_N, BLOCK_M, BLOCK_K, num_warps, num_stages, SPLIT_K)."""
    bn, bm, bk = 64, bucket(m), 128
    return (bn, bm, bk, 4, 4, split_for(m, n, k, bn, bm, bk, device))


def split_for(m: int, n: int, k: int, bn: int, bm: int, bk: int, device: torch.device) -> int:
    """Split K until there are two programs a multiprocessor (each keeps 32-64 KB of tiles in flight), at most
    4 ways (the float32 partials grow with the split) and at least 4 K tiles a split."""
    tiles, sms, split = triton.cdiv(n, bn) * triton.cdiv(m, bm), num_sms(device.index or 0), 1
    while tiles * split < 2 * sms and split < 4 and triton.cdiv(k, bk) >= 8 * split:
        split *= 2
    return split


def _stages(stages: int, per_stage: int) -> int:
    while stages > 2 and stages * per_stage > SMEM_BYTES:
        stages -= 1
    return stages


def _desc(t: torch.Tensor, block: list[int]):
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)


def w8a16_skinny(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None, gated: bool = False,
                 config=None, tma: bool | None = None) -> torch.Tensor:
    """x [m, k] (m <= 64; routed here at 2-64) fp16/bf16, w [n, k] int8, scale [n] -> [m, n]; gated: w and scale are
    [gate; up] (2n rows) and the result silu(gate) * up, [m, n]."""
    if gated and bias is not None:
        raise ValueError("w8a16_skinny: a gated weight takes no bias")
    x = x.contiguous()
    m, k = x.shape
    n = w.shape[0] // 2 if gated else w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    on = pdl(x)
    b = bias if bias is not None else scale
    bn, bm, bk, warps, stages, split = config or skinny_config(m, n, k, x.device)
    stages = _stages(stages, ((2 if gated else 1) * bn + 2 * bm) * bk)
    tma = use_tma(x, w) if tma is None else tma
    out = y if split == 1 else torch.empty(split, m, 2 * n if gated else n, dtype=torch.float32, device=x.device)
    xd, wd = (_desc(x, [bm, bk]), _desc(w, [bn, bk])) if tma else (x, w)
    w8a16_skinny_kernel[(triton.cdiv(n, bn), split, triton.cdiv(m, bm))](
        x, w, xd, wd, scale, b, out, m, n, k, x.stride(0), w.stride(0), out.stride(-2),
        out.stride(0) if split > 1 else 0, TMA=tma, HAS_BIAS=bias is not None, GATED=gated, SPLIT_K=split,
        EVEN_K=k % bk == 0, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, PDL=on, num_warps=warps, num_stages=stages,
        launch_pdl=on)
    if split > 1:
        block = 1024
        w8a16_reduce_kernel[(m, triton.cdiv(n, block))](
            out, b, y, n, out.stride(0), out.stride(1), SPLIT_K=split, HAS_BIAS=bias is not None, GATED=gated,
            BLOCK=block, PDL=on, num_warps=4, launch_pdl=on)
    return y
