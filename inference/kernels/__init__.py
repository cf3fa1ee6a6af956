"""Triton kernels for CUDA (decode attention, decode matmuls, fused norm / rotary / activation).

This module imports no Triton: it says whether Triton runs a tensor (`use_triton`) and picks the decode
matmul's kernel (`decode_matmul`); the kernel modules are imported only where they run (CUDA)."""

from __future__ import annotations

import functools

import torch

from inference import envs


@functools.cache
def _triton_ok() -> bool:
    if envs.NO_TRITON:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    """True for CUDA tensors when Triton is importable and QWEN_CHAT_NO_TRITON is not set (`envs`)."""
    return x.is_cuda and _triton_ok()


ROW_GROUP = 64  # prefill rows in a graph attend in aligned groups of this many (`row_group_attention`)
DECODE_MATMUL_MAX_ROWS = 64  # decode sizes: up to this many rows, `decode_matmul` takes a Triton kernel


def decode_matmul_kernel(x: torch.Tensor) -> str | None:
    """Which of `decode_matmul`'s kernels takes x: "gemv" (1 row), "skinny" (2-64 rows; also 0 rows, for which
    `skinny_gemm` returns an empty result and launches nothing), or None (cuBLAS)."""
    m = x.shape[0]
    if not use_triton(x) or m > DECODE_MATMUL_MAX_ROWS or (m > 1 and x.dtype == torch.float32):
        return None
    return "gemv" if m == 1 else "skinny"


def decode_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False):
    """x W^T (+ b) at decode sizes on CUDA through Triton: 1 row, the GEMV (`gemv`); 2-64 rows, the skinny
    tensor-core GEMM (`skinny_gemm`). None where cuBLAS should do it (more rows; also float32 above 1 row:
    tensor cores would round it to tf32). gated: `weight` is [gate; up] and the result silu(gate) * up."""
    kind = decode_matmul_kernel(x)
    if kind == "gemv":
        from inference.kernels.gemv import gemv

        return gemv(x, weight, bias, gated=gated)
    if kind == "skinny":
        from inference.kernels.skinny import skinny_gemm

        return skinny_gemm(x, weight, bias, gated=gated)
    return None


@functools.cache
def capability_at_least(index: int, major: int) -> bool:
    """CUDA device `index` has compute capability `major`.x or newer (8: Ampere, 9: Hopper)."""
    return torch.cuda.get_device_capability(index)[0] >= major


@functools.cache
def num_sms(index: int) -> int:
    """Multiprocessors of CUDA device `index` (4 under the Triton interpreter on the CPU)."""
    if not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(index).multi_processor_count


def pdl(x: torch.Tensor) -> bool:
    """Programmatic dependent launch for the decode kernels (Hopper and newer): each kernel is launched
    while the one before it drains and waits (`griddepcontrol.wait`) before touching memory, so the ~1 us
    launch gap between consecutive small kernels overlaps work. Every such kernel waits first, so a kernel
    two or more back has always finished too."""
    return x.is_cuda and capability_at_least(x.device.index or 0, 9)
