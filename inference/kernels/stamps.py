"""Per-program timestamps in the decode matmul kernels, for bench/timeline_probe.py (off unless recording).

While a `Recorder` is active, each launch of a stamped kernel takes a run of the recorder's rows, one per
program: the GPU's global timer (ns) on entry, after the wait for the kernel before (programmatic launch),
and after the program's last store, and the multiprocessor it ran on. Under CUDA-graph capture the rows
are taken once and every replay rewrites them. Kernels get STAMP=False otherwise: no code, no cost.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def now():
    return tl.extra.cuda.globaltimer()


@triton.jit
def stamp(ptr, program, t_in, t_go):
    """Row `program` of ptr: (entry, after the wait, now, multiprocessor)."""
    row = ptr + program.to(tl.int64) * 4
    tl.store(row, t_in)
    tl.store(row + 1, t_go)
    tl.store(row + 2, now())
    tl.store(row + 3, tl.extra.cuda.smid().to(tl.int64))


class Recorder:
    """rows: int64 [capacity, 4]; launches: (kernel, M, N, K, first row, programs) in launch order."""

    def __init__(self, capacity: int = 1 << 20, device: str = "cuda"):
        self.rows = torch.zeros(capacity, 4, dtype=torch.int64, device=device)
        self.used = 0
        self.launches: list[tuple] = []

    def take(self, kernel: str, m: int, n: int, k: int, programs: int) -> torch.Tensor:
        if self.used + programs > len(self.rows):
            raise ValueError(f"stamps: {len(self.rows)} rows are full; make the Recorder larger")
        self.launches.append((kernel, m, n, k, self.used, programs))
        self.used += programs
        return self.rows[self.used - programs:self.used]


_active: list[Recorder] = []


def active() -> Recorder | None:
    return _active[-1] if _active else None


@contextlib.contextmanager
def recording(rec: Recorder):
    _active.append(rec)
    try:
        yield rec
    finally:
        _active.pop()
