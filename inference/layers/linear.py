"""Megatron-style tensor-parallel linear layers with per-parameter weight loaders.

Each loader receives a safetensors slice (or tensor) and reads only this rank's rows/columns,
so no rank ever holds the whole checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.distributed import all_reduce, get_rank, get_world_size
from inference.errors import UserError
from inference.kernels import decode_matmul


def _check(name: str, got, want) -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"tensor {name}: shape {list(got)} does not fit the config (expected {list(want)}); "
                        "config.json and the weights disagree, re-download the checkpoint")


def load_rows(param: torch.Tensor, src, start: int, count: int, dst_start: int = 0) -> None:
    """Copy rows [start, start+count) of `src` (a safetensors slice or tensor) into param[dst_start:...]."""
    param.data[dst_start:dst_start + count].copy_(src[start:start + count])


class LinearBase(nn.Module):
    """y = x W^T (+ b), W of shape [out_local, in_local]. `quant_method` may replace the matmul (quant/)."""

    def __init__(self, in_local: int, out_local: int, bias: bool, full_in: int, full_out: int):
        super().__init__()
        self.tp_rank, self.tp_size = get_rank(), get_world_size()
        self.in_features, self.out_features = in_local, out_local
        self.full_in, self.full_out = full_in, full_out
        self.weight = nn.Parameter(torch.empty(out_local, in_local), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_local), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        self.quant_method = None

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x)
        y = decode_matmul(x, self.weight, self.bias)  # decode sizes: Triton streams the weight faster
        return y if y is not None else nn.functional.linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        tp = get_world_size()
        super().__init__(in_features, out_features // tp, bias, in_features, out_features)

    def weight_loader(self, param, src, name="", shard_id=None):
        shape = src.get_shape() if hasattr(src, "get_shape") else src.shape
        _check(name, shape, (self.full_out, self.full_in)[: len(shape)])
        n = param.shape[0]
        load_rows(param, src, self.tp_rank * n, n)

    def forward(self, x):
        return self.matmul(x)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel matrices stacked (gate/up): shard `shard_id` fills its part of each rank."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False):
        self.out_sizes = out_sizes
        super().__init__(in_features, sum(out_sizes), bias)

    def weight_loader(self, param, src, name="", shard_id=0):
        shape = src.get_shape() if hasattr(src, "get_shape") else src.shape
        full = self.out_sizes[shard_id]
        _check(name, shape, (full, self.full_in)[: len(shape)])
        n = full // self.tp_size
        offset = sum(self.out_sizes[:shard_id]) // self.tp_size
        load_rows(param, src, self.tp_rank * n, n, dst_start=offset)


class QKVParallelLinear(ColumnParallelLinear):
    """Qwen's c_attn: q, k, v stacked (each hidden rows); each rank takes its heads of all three."""

    def __init__(self, hidden: int, bias: bool = True):
        super().__init__(hidden, 3 * hidden, bias)
        self.hidden = hidden

    def weight_loader(self, param, src, name="", shard_id=None):
        shape = src.get_shape() if hasattr(src, "get_shape") else src.shape
        _check(name, shape, (3 * self.hidden, self.hidden)[: len(shape)])
        n = self.hidden // self.tp_size
        for i in range(3):
            load_rows(param, src, i * self.hidden + self.tp_rank * n, n, dst_start=i * n)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; one all-reduce of the output."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        tp = get_world_size()
        super().__init__(in_features // tp, out_features, bias, in_features, out_features)

    def weight_loader(self, param, src, name="", shard_id=None):
        shape = src.get_shape() if hasattr(src, "get_shape") else src.shape
        if len(shape) == 1:  # bias: full, added once on rank 0
            _check(name, shape, (self.full_out,))
            param.data.copy_(src[:] if self.tp_rank == 0 else torch.zeros(shape))
            return
        _check(name, shape, (self.full_out, self.full_in))
        n = param.shape[1]
        param.data.copy_(src[:, self.tp_rank * n:(self.tp_rank + 1) * n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduced x W^T. A block's residual add and the norm after it run in this matmul's kernels
        where they can (`layers.fusion.project_add_norm`)."""
        return all_reduce(self.matmul(x))
