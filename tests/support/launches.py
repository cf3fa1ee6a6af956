"""The CUDA kernels a call launches (for the gpu tests)."""

from __future__ import annotations

import torch


def cuda_kernels(fn) -> list[str]:
    """Names of the CUDA kernels `fn()` launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def launched(kernels: list[str], name: str) -> bool:
    """Whether a kernel named `name` (a Triton function's name) is among `kernels`."""
    return any(k == name or k.startswith(name + "_") or name + "(" in k for k in kernels)
