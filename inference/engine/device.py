"""Pick the device and dtype; NPUs come through torch_npu and use only standard torch operations."""

from __future__ import annotations

import importlib
import os

import torch

from inference.config import EngineConfig, ModelConfig, check_tp_devices
from inference.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def npu_module():
    """torch.npu after importing torch_npu, or None when there is no Ascend stack."""
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return None
    npu = getattr(torch, "npu", None)
    return npu if npu is not None and npu.is_available() else None


def device_count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "npu":
        npu = npu_module()
        return npu.device_count() if npu else 0
    return os.cpu_count() or 1


def cpu_threads(requested: int | None = None) -> int:
    """Threads for torch's CPU work: `requested` (--cpu-threads), else OMP_NUM_THREADS when set, else the
    cores this process may run on less one (the app's, or whatever else runs beside the engine), shared
    among this host's ranks. More threads than free cores is far slower than one: on two cores beside one
    busy process, torch's default of two threads decoded the demo at 7.6 tok/s, one thread at 126."""
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def resolve_device(cfg: EngineConfig) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "npu" if npu_module() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), "
                        "or use --device cpu")
    if kind == "npu" and npu_module() is None:
        raise UserError("--device npu: torch_npu is not installed or no Ascend NPU is visible; "
                        "install torch_npu with CANN, or use --device cpu")
    check_tp_devices(cfg.tp, kind, None if kind == "cpu" else device_count(kind))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "cuda":
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if kind == "npu":
        torch.npu.set_device(local)
        return torch.device("npu", local)
    return torch.device("cpu")


def npu_supports_bf16() -> bool:
    npu = npu_module()
    check = getattr(npu, "is_bf16_supported", None) if npu else None
    return bool(check and check())


def resolve_dtype(cfg: EngineConfig, model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        dtype = DTYPES[cfg.dtype]
    elif device.type == "cpu":
        dtype = torch.float32
    elif device.type == "npu":
        dtype = torch.bfloat16 if npu_supports_bf16() and model_cfg.torch_dtype == "bfloat16" else torch.float16
    else:
        dtype = DTYPES.get(model_cfg.torch_dtype, torch.bfloat16)
    if device.type == "npu" and dtype == torch.bfloat16 and not npu_supports_bf16():
        raise UserError("this NPU (e.g. 300I DUO) has no bfloat16: use --dtype float16")
    return dtype
