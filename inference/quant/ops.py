"""Entry points for the Triton int8 kernels (`kernels`). No autotuning: the tile shapes below were
measured on an H100 (7B shapes, `bench/quant_bench.py`) and are picked by the number of tokens, so a shape
compiles once and CUDA-graph capture never benchmarks.

- `w8a16_linear`: y = x (q s)^T + b, the int8 weight converted in registers:
  1 token: `w8a16_gemv` (`gemv_kernels`: the weight read as 32-bit words for a plain weight, bytes for a
  merged [gate; up] weight, of which it writes silu(gate) * up);
  2..64 tokens: `decode_ops.w8a16_skinny` (swap-AB tensor-core GEMM, split K, the gated SiLU of a merged
  [gate; up] weight fusable), measured faster there on an H100 than this module's kernels, which measured
  faster at one token;
  65..511 tokens: a tensor-core GEMM with the converted weight tile as the left operand ("swap AB");
  512 tokens or more (prefill): the weight dequantized to the activation dtype, then cuBLAS.
- `quantize_per_token` / `quantize_static`: float -> int8 activations (per-token scales computed in
  the same kernel, or given).
- `int8_linear`: y = (xq wq^T + quant_bias) * row_scale * col_scale + b on int8 tensor cores (int32
  accumulator) with the dequantization fused into the epilogue (measured faster than torch._int_mm
  plus an epilogue at 16, 64 and 256 tokens) from 2 tokens; at 2-64 tokens it also measured faster on an H100
  than a split-K skinny GEMM. One token: `gemv_kernels.w8a8_gemv_kernel` (`dp4a`, exact, gated form too).
Numerics follow `inference.quant.utils` (IEEE division, round half to even): the CPU reference and these
kernels agree up to float summation order (and, for prefill W8A16, the rounding of the dequantized weight).
"""

from __future__ import annotations

import os

import torch
import triton

from inference.kernels import pdl
from inference.quant import decode_ops
from inference.quant.gemv_kernels import w8a8_gemv_kernel, w8a16_gemv_bytes_kernel, w8a16_gemv_kernel
from inference.quant.kernels import (
    dequant_weight_kernel,
    int8_gemm_kernel,
    quant_per_token_kernel,
    quant_static_kernel,
    splitk_reduce_kernel,
    w8a16_swap_kernel,
)

GEMV_MAX_M = 1  # tokens served by the GEMV kernel; from here to DECODE_MAX_M: `decode_ops`
DECODE_MAX_M = decode_ops.DECODE_MAX_M
SWAP_MAX_M = 511  # up to here the swapped GEMM; from DEQUANT_MIN_M on: dequantize + cuBLAS
DEQUANT_MIN_M = 512
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # no inline assembly there
# 128-byte lines of each weight row that W8A8's kernels at 1-64 tokens ask L2 for before the PDL wait
# (`fused.l2_prefetch`); measured on an H100: 8 lines faster, 16-32 slower, and slower for W8A16's kernels
W8A8_PREFETCH = 0 if INTERPRETED else 8


W8A8_GEMV = ("gemv", 8, 256, 4, 3)  # (kind, BLOCK_N, BLOCK_K4 words, warps, stages), measured on an H100


def words(w: torch.Tensor) -> bool:
    """Whether the int8 weight can be read as 32-bit words (the one-token GEMVs need that)."""
    return w.shape[1] % 4 == 0 and w.stride(0) % 4 == 0 and w.stride(1) == 1 and w.data_ptr() % 4 == 0


def w8a16_gemv_config(x: torch.Tensor, w: torch.Tensor, gated: bool):
    """(kind, BLOCK_N, BLOCK_K (words for "words"), warps, stages), measured on an H100 at 7B shapes: the word
    GEMV for a plain weight, the byte GEMV for a gated one (and where the weight or the token are not aligned
    for words)."""
    if not gated and words(w) and x.shape[1] % 4 == 0 and x.data_ptr() % 8 == 0:
        return ("words", 8, 128, 4, 3)
    return ("bytes", 2, 1024, 4, 3)


def w8a16_config(m: int, n: int, device: torch.device):
    """Measured choices: ("gemv",) (`w8a16_gemv_config`), ("decode",) (`decode_ops`, its own tiles),
    ("swap", BLOCK_N, BLOCK_M, BLOCK_K, warps, stages, SPLIT_K) or ("dequant",)."""
    if m <= GEMV_MAX_M:
        return ("gemv",)
    if m <= DECODE_MAX_M:
        return ("decode",)
    if m <= SWAP_MAX_M:
        return ("swap", 64, 128, 128, 4, 3, 1)
    return ("dequant",)


def int8_config(m: int, n: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), measured."""
    if m <= 64:
        return decode_ops.bucket(m), 32, 256, 4, 5 if n <= 8192 else 3
    if m <= 256:
        return 64, 128, 128, 4, 4
    return 128, 128, 128, 8, 3


def w8a16_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None, gated: bool = False,
               config=None) -> torch.Tensor:
    """One token: x [1, k] fp16/bf16, w [n, k] int8, scale [n] -> [1, n]; gated: w and scale are [gate; up]
    (2n rows), no bias, and the result is silu(gate) * up, [1, n]. `config` overrides `w8a16_gemv_config`."""
    x = x.contiguous()
    kind, bn, bk, warps, stages = config or w8a16_gemv_config(x, w, gated)
    k = x.shape[1]
    n = w.shape[0] // 2 if gated else w.shape[0]
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    on = pdl(x)
    b = bias if bias is not None else scale
    if kind == "words":  # the token read 4 elements (8 bytes) at a time, the weight 4 bytes a word
        w8a16_gemv_kernel[(triton.cdiv(n, bn),)](
            x.view(torch.int64), w.view(torch.int32), scale, b, y, n, k // 4, w.stride(0) // 4,
            HAS_BIAS=bias is not None, GATED=gated, EVEN_K=(k // 4) % bk == 0, BLOCK_N=bn, BLOCK_K4=bk,
            STAGES=stages, ASM=not INTERPRETED, PDL=on, num_warps=warps, launch_pdl=on)
    else:
        w8a16_gemv_bytes_kernel[(triton.cdiv(n, bn),)](
            x, w, scale, b, y, n, k, w.stride(0), HAS_BIAS=bias is not None, GATED=gated, EVEN_K=k % bk == 0,
            BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, PDL=on, num_warps=warps, launch_pdl=on)
    return y


def _swap(x, w, scale, bias, cfg) -> torch.Tensor:
    _, bn, bm, bk, warps, stages, split = cfg
    m, k = x.shape
    n = w.shape[0]
    if split == 1:
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    else:
        y = torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    w8a16_swap_kernel[(triton.cdiv(n, bn), split, triton.cdiv(m, bm))](
        x, w, scale, bias if bias is not None else scale, y, m, n, k, x.stride(0), w.stride(0), y.stride(-2),
        y.stride(0) if split > 1 else 0, HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=k % bk == 0,
        BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    if split == 1:
        return y
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block = 1024
    splitk_reduce_kernel[(triton.cdiv(m * n, block),)](
        y, bias if bias is not None else y, out, m * n, n, y.stride(0), SPLIT_K=split, HAS_BIAS=bias is not None,
        BLOCK=block, num_warps=4)
    return out


def _dequant_linear(x, w, scale, bias) -> torch.Tensor:
    n, k = w.shape
    wd = torch.empty(n, k, dtype=x.dtype, device=x.device)
    block = 1024
    dequant_weight_kernel[(n, triton.cdiv(k, block))](w, scale, wd, k, BLOCK=block, num_warps=4)
    return torch.nn.functional.linear(x, wd, bias)


def w8a16_linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None, config=None) -> torch.Tensor:
    """x [m, k] fp16/bf16, w [n, k] int8, scale [n] float32, bias [n] or None -> [m, n] in x.dtype.
    `config` overrides `w8a16_config` (tuning)."""
    x = x.contiguous()
    if x.shape[0] == 0:
        return torch.empty(0, w.shape[0], dtype=x.dtype, device=x.device)
    cfg = config or w8a16_config(x.shape[0], w.shape[0], x.device)
    if cfg[0] in ("gemv", "words", "bytes"):
        return w8a16_gemv(x, w, scale, bias, config=None if cfg == ("gemv",) else cfg)
    if cfg[0] == "decode":
        return decode_ops.w8a16_skinny(x, w, scale, bias)
    if cfg[0] == "swap":
        return _swap(x, w, scale, bias, cfg)
    return _dequant_linear(x, w, scale, bias)


def quantize_per_token(x: torch.Tensor, scale: torch.Tensor | None = None):
    """int8 [m, k] and float32 [m] per-token scales (computed here, or `scale` given)."""
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    s = scale.float().contiguous() if scale is not None else torch.empty(m, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(k) if k <= 16384 else 4096
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    on = pdl(x)
    quant_per_token_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), GIVEN=scale is not None,
                                  ONE_PASS=block >= k, BLOCK=block, PDL=on, num_warps=warps, launch_pdl=on)
    return q, s


def quantize_static(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    block = 1024
    on = pdl(x)
    quant_static_kernel[(m, triton.cdiv(k, block))](
        x, q, scale, offset if offset is not None else scale, k, x.stride(0), q.stride(0),
        HAS_OFFSET=offset is not None, BLOCK=block, PDL=on, num_warps=4, launch_pdl=on)
    return q


def int8_linear(xq: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
                quant_bias=None, bias=None, out_dtype=torch.float16, config=None) -> torch.Tensor:
    """(xq w^T + quant_bias) * row_scale[m] * col_scale[n] + bias, in out_dtype; row_scale [m] or [1].
    `config` overrides `int8_config` (tuning)."""
    m, k = xq.shape
    n = w.shape[0]
    if m == 0:
        return torch.empty(0, n, dtype=out_dtype, device=xq.device)
    row_scale = row_scale.float()
    if m == 1 and words(w) and config is None:
        return w8a8_gemv(xq, w, row_scale, col_scale, quant_bias, bias, out_dtype)
    bm, bn, bk, warps, stages = config or int8_config(m, n)
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    on = pdl(xq)
    int8_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        xq, w, col_scale, row_scale, quant_bias if quant_bias is not None else col_scale,
        bias if bias is not None else col_scale, y, m, n, k, xq.stride(0), w.stride(0), y.stride(0),
        ROW_SCALAR=row_scale.numel() == 1, HAS_QB=quant_bias is not None, HAS_BIAS=bias is not None,
        EVEN_K=k % bk == 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        PREFETCH=W8A8_PREFETCH if m <= 64 else 0, PDL=on, num_warps=warps, num_stages=stages, launch_pdl=on)
    return y


def w8a8_gemv(xq: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, quant_bias=None,
              bias=None, out_dtype=torch.float16, gated: bool = False, config=None) -> torch.Tensor:
    """One token: `int8_linear`'s result through `dp4a` (exact int32 sums, so the same values); gated: w,
    col_scale and quant_bias are [gate; up] (2n rows), no bias, and the result is silu(gate) * up, [1, n]."""
    _, bn, bk4, warps, stages = config or W8A8_GEMV
    k = xq.shape[1]
    n = w.shape[0] // 2 if gated else w.shape[0]
    y = torch.empty(1, n, dtype=out_dtype, device=xq.device)
    on = pdl(xq)
    w8a8_gemv_kernel[(triton.cdiv(n, bn),)](
        xq.contiguous().view(torch.int32), w.view(torch.int32), col_scale, row_scale.float(),
        quant_bias if quant_bias is not None else col_scale, bias if bias is not None else col_scale, y, n,
        k // 4, w.stride(0) // 4, HAS_QB=quant_bias is not None, HAS_BIAS=bias is not None, GATED=gated,
        EVEN_K=(k // 4) % bk4 == 0, BLOCK_N=bn, BLOCK_K4=bk4, STAGES=stages, ASM=not INTERPRETED,
        PREFETCH=W8A8_PREFETCH, PDL=on, num_warps=warps, launch_pdl=on)
    return y
