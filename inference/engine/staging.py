"""One host-to-device copy per eager step: the step's index tensors packed into a reused pinned buffer.

Separate `torch.tensor(...).to(cuda)` copies come from pageable memory, which blocks the host for each one;
a prefill step then starts late and stalls again before its logits. Here the int64 inputs are written
into one pinned buffer and sent with a single asynchronous copy. The buffer is reused: before it is
overwritten, the previous copy's event is waited on (long done in practice: every step reads back).
"""

from __future__ import annotations

import torch


class HostStaging:
    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.buf: torch.Tensor | None = None
        self.done: torch.cuda.Event | None = None

    def upload(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """int64 CPU tensors -> the same tensors on the device (1-D views of one buffer)."""
        sizes = [p.numel() for p in parts]
        if not self.pinned:
            return [p.reshape(-1).to(self.device) for p in parts]
        total = sum(sizes)
        if self.done is not None:
            self.done.synchronize()
        if self.buf is None or self.buf.numel() < total:
            self.buf = torch.empty(max(total, 2 * (self.buf.numel() if self.buf is not None else 4096)),
                                   dtype=torch.long, pin_memory=True)
        torch.cat([p.reshape(-1) for p in parts], out=self.buf[:total])
        dev = self.buf[:total].to(self.device, non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record()
        return list(dev.split(sizes))
