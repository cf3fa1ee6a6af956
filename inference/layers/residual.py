"""The residual stream of a pre-norm transformer, with the last sublayer's output projection pending.

A block reads x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). Each sublayer ends in a row-parallel projection
(c_proj), and the add and the norm that come after it are cheapest inside that projection's kernels
(`fusion.project_add_norm`). So a sublayer returns its projection `Deferred`, adding it to the stream
records it, and the next norm computes projection, add and norm together, whichever block it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.layers.fusion import project_add_norm
from inference.layers.layernorm import RMSNorm
from inference.layers.linear import RowParallelLinear


@dataclass(frozen=True)
class Deferred:
    """proj(a), computed when the residual stream needs it (`ResidualStream`)."""

    proj: RowParallelLinear
    a: torch.Tensor


class ResidualStream:
    """The hidden state between sublayers: `stream`, plus `pending` (a sublayer's output) not yet added."""

    def __init__(self, stream: torch.Tensor, pending: Deferred | None = None):
        self.stream, self.pending = stream, pending

    def add(self, out: Deferred) -> ResidualStream:
        """This stream + out, computed by the next `norm`."""
        return ResidualStream(self.value(), out)

    def norm(self, ln: RMSNorm) -> torch.Tensor:
        """ln(x). Where a sublayer's output is pending, its projection, the add and the norm run together, and
        the sum becomes `stream` (the tensor `stream` held may be overwritten with it)."""
        if self.pending is None:
            h, self.stream = ln(self.stream)
        else:
            h, self.stream = project_add_norm(self.pending.proj, self.pending.a, self.stream, ln)
            self.pending = None
        return h

    def value(self) -> torch.Tensor:
        """x as one tensor (the pending output added, unfused)."""
        if self.pending is not None:
            self.stream = self.stream + self.pending.proj(self.pending.a)
            self.pending = None
        return self.stream
