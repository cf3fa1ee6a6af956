"""Launchers for the decode-size int8 kernels (`decode_kernels`): 1 token a GEMV, 2-64 tokens the swap-AB
tensor-core GEMM (TMA on Hopper, split K where the output has too few tiles).

Fixed tiles, no autotuning: a shape compiles once and CUDA-graph capture never benchmarks. Why these:
- GEMVs move about 4 KB of weight a program an iteration (the fp16 GEMV's 2 rows x 1024-2048 halves), so
  each multiprocessor keeps enough bytes in flight; the W8A16 GEMV takes 4 rows so that even a 4096-row
  layer has 1024 programs (76 registers a thread for sm_90: six resident a multiprocessor). The W8A8 GEMV
  takes 8 rows with 4 warps (63 registers): every program quantizes the token itself (one IEEE division an
  element, shared by its rows), and 8 rows still give a 4096-row layer 512 programs.
- Skinny GEMMs: 64 weight rows by the 16-64 tokens by 128 (W8A16, converted to fp16 in registers, which
  bounds the tile) or 256 (W8A8, int8 tensor cores) along K; K is split (2 or 4 ways) towards two programs
  a multiprocessor. The partials are summed in a fixed order (W8A8: int32, exact).
`config` arguments override the table (the GPU tests run every branch; `.carry` benchmarks compare tiles).
"""

from __future__ import annotations

import functools

import torch
import triton

from inference.kernels import capability_at_least, pdl
from inference.quant.decode_kernels import (
    w8a8_gemv_kernel,
    w8a8_reduce_kernel,
    w8a8_skinny_kernel,
    w8a16_gemv_kernel,
    w8a16_reduce_kernel,
    w8a16_skinny_kernel,
)

DECODE_MAX_M = 64
SMEM_BYTES = 200 * 1024  # a program's pipelined tiles stay under this (Hopper: 227 KB a block)


@functools.cache
def _num_sms(index: int) -> int:
    if not torch.cuda.is_available():  # the Triton interpreter (TRITON_INTERPRET=1) on the CPU
        return 4
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bucket(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def gemv_config(scheme: str) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    return (4, 1024, 4, 3) if scheme == "w8a16" else (8, 512, 4, 3)


def skinny_config(scheme: str, m: int, n: int, k: int, device: torch.device, gated: bool = False):
    """(BLOCK_N, BLOCK_M, BLOCK_K, num_warps, num_stages, SPLIT_K)."""
    bm = _bucket(m)
    bn, bk = (64, 128) if scheme == "w8a16" else (64, 256)
    return (bn, bm, bk, 4, 4, split_for(m, n, k, bn, bm, bk, device))


def split_for(m: int, n: int, k: int, bn: int, bm: int, bk: int, device: torch.device) -> int:
    """Split K until there are two programs a multiprocessor (each keeps 32-64 KB of tiles in flight), at most
    4 ways (the float32 partials grow with the split) and at least 4 K tiles a split."""
    tiles, sms, split = triton.cdiv(n, bn) * triton.cdiv(m, bm), _num_sms(device.index or 0), 1
    while tiles * split < 2 * sms and split < 4 and triton.cdiv(k, bk) >= 8 * split:
        split *= 2
    return split


def _stages(stages: int, per_stage: int) -> int:
    while stages > 2 and stages * per_stage > SMEM_BYTES:
        stages -= 1
    return stages


def _tma(*ts: torch.Tensor) -> bool:
    """TMA tiles: Hopper or newer, 16-byte aligned bases and row strides."""
    return (ts[0].is_cuda and capability_at_least(ts[0].device.index or 0, 9)
            and all(t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 and t.stride(1) == 1
                    for t in ts))


def _desc(t: torch.Tensor, block: list[int]):
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)


def w8a16_decode(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None, gated: bool = False,
                 config=None, tma: bool | None = None) -> torch.Tensor:
    """x [m, k] (1 <= m <= 64) fp16/bf16, w [n, k] int8, scale [n] -> [m, n]; gated: w and scale are
    [gate; up] (2n rows) and the result silu(gate) * up, [m, n]."""
    if gated and bias is not None:
        raise ValueError("w8a16_decode: a gated weight takes no bias")
    x = x.contiguous()
    m, k = x.shape
    n = w.shape[0] // 2 if gated else w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    on = pdl(x)
    b = bias if bias is not None else scale
    if m == 1:
        bn, bk, warps, stages = config or gemv_config("w8a16")
        w8a16_gemv_kernel[(triton.cdiv(n, bn),)](
            x, w, scale, b, y, n, k, w.stride(0), HAS_BIAS=bias is not None, GATED=gated, EVEN_K=k % bk == 0,
            BLOCK_N=bn, BLOCK_K=bk, PDL=on, num_warps=warps, num_stages=stages, launch_pdl=on)
        return y
    bn, bm, bk, warps, stages, split = config or skinny_config("w8a16", m, n, k, x.device, gated)
    stages = _stages(stages, ((2 if gated else 1) * bn + 2 * bm) * bk)
    tma = _tma(x, w) if tma is None else tma
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


def w8a8_gemv(x: torch.Tensor, w: torch.Tensor, col_scale: torch.Tensor, scale=None, offset=None, quant_bias=None,
              bias=None, config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One fp16/bf16 token x [1, k]: quantized inside the kernel (per token, or by the given `scale` [1] and
    `offset`), int8 x int8 against w [n, k], dequantized: ([1, n] in x.dtype, the token's float32 scale [1])."""
    x = x.contiguous()
    _, k = x.shape
    n = w.shape[0]
    bn, bk, warps, stages = config or gemv_config("w8a8")
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    rs = scale.float().reshape(1) if scale is not None else torch.empty(1, dtype=torch.float32, device=x.device)
    on = pdl(x)
    w8a8_gemv_kernel[(triton.cdiv(n, bn),)](
        x, w, col_scale, rs, offset if offset is not None else rs, quant_bias if quant_bias is not None else w,
        bias if bias is not None else col_scale, y, n, k, w.stride(0), GIVEN=scale is not None,
        HAS_OFFSET=offset is not None, HAS_QB=quant_bias is not None, HAS_BIAS=bias is not None,
        EVEN_K=k % bk == 0, BLOCK_N=bn, BLOCK_K=bk, PDL=on, num_warps=warps, num_stages=stages, launch_pdl=on)
    return y, rs


def w8a8_skinny(xq: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
                quant_bias=None, bias=None, out_dtype=torch.float16, config=None, tma: bool | None = None):
    """(xq w^T + quant_bias) * row_scale * col_scale + bias for 2-64 int8 tokens xq [m, k]; row_scale [m] or [1]."""
    m, k = xq.shape
    n = w.shape[0]
    bn, bm, bk, warps, stages, split = config or skinny_config("w8a8", m, n, k, xq.device)
    stages = _stages(stages, (bn + bm) * bk)
    tma = _tma(xq, w) if tma is None else tma
    row_scale = row_scale.float()
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    out = y if split == 1 else torch.empty(split, m, n, dtype=torch.int32, device=xq.device)
    ad, wd = (_desc(xq, [bm, bk]), _desc(w, [bn, bk])) if tma else (xq, w)
    qb = quant_bias if quant_bias is not None else col_scale
    b = bias if bias is not None else col_scale
    flags = dict(ROW_SCALAR=row_scale.numel() == 1, HAS_QB=quant_bias is not None, HAS_BIAS=bias is not None,
                 SPLIT_K=split)
    on = pdl(xq)
    w8a8_skinny_kernel[(triton.cdiv(n, bn), split, triton.cdiv(m, bm))](
        xq, w, ad, wd, row_scale, col_scale, qb, b, out, m, n, k, xq.stride(0), w.stride(0), out.stride(-2),
        out.stride(0) if split > 1 else 0, TMA=tma, EVEN_K=k % bk == 0, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk,
        PDL=on, num_warps=warps, num_stages=stages, launch_pdl=on, **flags)
    if split > 1:
        block = 1024
        w8a8_reduce_kernel[(m, triton.cdiv(n, block))](
            out, row_scale, col_scale, qb, b, y, m, n, out.stride(0), out.stride(1), BLOCK=block, PDL=on,
            num_warps=4, launch_pdl=on, **flags)
    return y
