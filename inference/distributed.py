"""Process groups: gloo on CPU, nccl on CUDA, hccl on NPU. Rank 0 drives; ranks > 0 follow its plans."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from inference import envs

_cpu_group = None  # gloo group for pickled step plans (also under nccl/hccl)


def get_rank() -> int:
    return envs.rank()


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str, timeout_s: float = 300.0) -> None:
    """Join the job's process group (torchrun sets the env), once."""
    global _cpu_group
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return
    backend = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device_type]
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if backend != "gloo" \
        else dist.group.WORLD


def broadcast_object(obj=None):
    """Rank 0 sends `obj`; every rank returns it."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        dist.all_reduce(x)
    return x


def broadcast_tensor(x: torch.Tensor) -> torch.Tensor:
    """`x` as rank 0 has it, on every rank (device group; in stream order, the host does not wait)."""
    if get_world_size() > 1:
        dist.broadcast(x, src=0)
    return x


def gather_last_dim(x: torch.Tensor) -> torch.Tensor | None:
    """Concatenate each rank's slice along the last dim on rank 0 (None elsewhere)."""
    n = get_world_size()
    if n == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(n)] if get_rank() == 0 else None
    dist.gather(x.contiguous(), parts, dst=0)
    return torch.cat(parts, dim=-1) if parts is not None else None


def shutdown() -> None:
    """Every rank calls this after rank 0's stop message: a barrier first, so no rank tears down early.
    Only a gloo job destroys its groups: destroying NCCL groups whose collectives were captured in CUDA
    graphs hangs (pytorch/pytorch#115388; seen on two H200s at tp 2), and every caller ends its process
    right after this (`exit_process`), which releases the communicators anyway."""
    if dist.is_initialized():
        dist.barrier(group=_cpu_group)
        if dist.get_backend() == "gloo":
            dist.destroy_process_group()


def min_across_ranks(value: int) -> int:
    if get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_cpu_group)
    return int(t.item())


def exit_process(code: int) -> NoReturn:
    """End this rank's process now, its output flushed, without interpreter teardown: gloo's threads can
    abort it ("terminate called ...") once the group is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
