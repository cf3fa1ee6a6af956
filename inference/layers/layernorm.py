"""RMSNorm in float32 (as Qwen computes it), optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from inference.kernels import use_triton


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden), requires_grad=False)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if use_triton(x):
            from inference.kernels.fused import add_rmsnorm

            return add_rmsnorm(x, residual, self.weight, self.eps)
        if residual is None:
            return self.norm(x), x
        x = x + residual
        return self.norm(x), x
