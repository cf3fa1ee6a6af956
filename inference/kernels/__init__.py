"""Triton kernels for CUDA (decode attention, fused norm / rotary / activation). Imported only on CUDA."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def _triton_ok() -> bool:
    if os.environ.get("QWEN_CHAT_NO_TRITON"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    """True for CUDA tensors when Triton is importable (set QWEN_CHAT_NO_TRITON=1 for the torch paths)."""
    return x.is_cuda and _triton_ok()


THIN_MAX_ROWS = 64  # decode sizes: up to this many rows, matmuls go through thin_matmul's Triton kernels


@functools.cache
def _skinny_on() -> bool:
    return os.environ.get("QWEN_CHAT_SKINNY", "1") != "0"


def thin_kind(x: torch.Tensor) -> str | None:
    """Which of thin_matmul's kernels takes x: "gemv" (1 row), "skinny" (2-64 rows), or None (cuBLAS)."""
    m = x.shape[0]
    if not use_triton(x) or m > THIN_MAX_ROWS or (m > 1 and (x.dtype == torch.float32 or not _skinny_on())):
        return None
    return "gemv" if m == 1 else "skinny"


def thin_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False,
                norm=None):
    """Decode-sized matmuls on CUDA through Triton (1 row: a GEMV; 2-64 rows: the skinny tensor-core GEMM);
    None where cuBLAS should do it (also float32 above 1 row: tensor cores would round it to tf32).
    gated: `weight` is [gate; up] and the result silu(gate) * up. norm = (residual, norm weight, eps):
    2-64 rows only, returns (rmsnorm(y + residual), y + residual) (skinny_linear).
    QWEN_CHAT_SKINNY=0 keeps 2-64 rows on cuBLAS (for A/B benchmarks)."""
    kind = thin_kind(x)
    if kind is None:
        return None
    if norm is not None:
        if kind == "gemv" or not _fuse_norm_on():
            return None
        from inference.kernels.skinny import skinny_linear  # noqa: PLC0415

        return skinny_linear(x, weight, norm=norm)
    if kind == "gemv":
        from inference.kernels.gemv import gemv  # noqa: PLC0415

        return gemv(x, weight, bias, gated=gated)
    from inference.kernels.skinny import skinny_linear  # noqa: PLC0415

    return skinny_linear(x, weight, bias, gated=gated)


@functools.cache
def _fuse_norm_on() -> bool:
    return os.environ.get("QWEN_CHAT_FUSE_NORM", "1") != "0"


@functools.cache
def _fuse_residual_on() -> bool:
    return os.environ.get("QWEN_CHAT_FUSE_RESIDUAL", "1") != "0"


def fuse_residual(x: torch.Tensor) -> bool:
    """Prefill-sized row-parallel matmuls on CUDA add the residual in cuBLAS's epilogue (the matmul reads
    it, the next norm no longer does): one pass over the hidden state fewer per norm. Decode sizes (at
    most THIN_MAX_ROWS rows) go through Triton (`thin_matmul`) and keep the fused add+RMSNorm.
    QWEN_CHAT_FUSE_RESIDUAL=0 turns it off (for A/B benchmarks)."""
    return x.shape[0] > THIN_MAX_ROWS and use_triton(x) and _fuse_residual_on()


@functools.cache
def device_feature(var: str, index: int, min_major: int) -> bool:
    """A kernel feature on CUDA device `index`: its compute capability is at least `min_major`.x and the
    environment variable `var` is not "0" (the A/B switch of each feature)."""
    return os.environ.get(var, "1") != "0" and torch.cuda.get_device_capability(index)[0] >= min_major


def pdl(x: torch.Tensor) -> bool:
    """Programmatic dependent launch for the decode kernels (Hopper and newer): each kernel is launched
    while the one before it drains and waits (`griddepcontrol.wait`) before touching memory, so the ~1 us
    launch gap between consecutive small kernels overlaps work. Every such kernel waits first, so a kernel
    two or more back has always finished too. QWEN_CHAT_PDL=0 turns it off (for A/B benchmarks)."""
    return x.is_cuda and device_feature("QWEN_CHAT_PDL", x.device.index or 0, 9)
