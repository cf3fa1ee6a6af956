"""Triton kernels for CUDA (decode attention, fused norm / rotary / activation). Imported only on CUDA."""

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


THIN_MAX_ROWS = 64  # decode sizes: up to this many rows, matmuls go through thin_matmul's Triton kernels


def thin_kind(x: torch.Tensor) -> str | None:
    """Which of thin_matmul's kernels takes x: "gemv" (1 row), "skinny" (2-64 rows; also 0 rows, for which
    `skinny_linear` returns an empty result and launches nothing), or None (cuBLAS)."""
    m = x.shape[0]
    if not use_triton(x) or m > THIN_MAX_ROWS or (m > 1 and x.dtype == torch.float32):
        return None
    return "gemv" if m == 1 else "skinny"


def thin_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False,
                norm=None):
    """Decode-sized matmuls on CUDA through Triton (1 row: a GEMV; 2-64 rows: the skinny tensor-core GEMM);
    None where cuBLAS should do it (also float32 above 1 row: tensor cores would round it to tf32).
    gated: `weight` is [gate; up] and the result silu(gate) * up. norm = (residual, norm weight, eps):
    2-64 rows only, returns (rmsnorm(y + residual), y + residual) (skinny_linear)."""
    kind = thin_kind(x)
    if kind is None:
        return None
    if norm is not None:
        if kind == "gemv":
            return None
        from inference.kernels.skinny import skinny_linear

        return skinny_linear(x, weight, norm=norm)
    if kind == "gemv":
        from inference.kernels.gemv import gemv

        return gemv(x, weight, bias, gated=gated)
    from inference.kernels.skinny import skinny_linear

    return skinny_linear(x, weight, bias, gated=gated)


def fuse_residual(x: torch.Tensor) -> bool:
    """Prefill-sized row-parallel matmuls on CUDA add the residual in cuBLAS's epilogue (the matmul reads
    it, the next norm no longer does): one pass over the hidden state fewer per norm. Decode sizes (at
    most THIN_MAX_ROWS rows) go through Triton (`thin_matmul`) and keep the fused add+RMSNorm."""
    return x.shape[0] > THIN_MAX_ROWS and use_triton(x)


@functools.cache
def capability_at_least(index: int, major: int) -> bool:
    """CUDA device `index` has compute capability `major`.x or newer (8: Ampere, 9: Hopper)."""
    return torch.cuda.get_device_capability(index)[0] >= major


def pdl(x: torch.Tensor) -> bool:
    """Programmatic dependent launch for the decode kernels (Hopper and newer): each kernel is launched
    while the one before it drains and waits (`griddepcontrol.wait`) before touching memory, so the ~1 us
    launch gap between consecutive small kernels overlaps work. Every such kernel waits first, so a kernel
    two or more back has always finished too."""
    return x.is_cuda and capability_at_least(x.device.index or 0, 9)
