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
