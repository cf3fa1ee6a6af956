"""Quantized parameters of a parallel linear layer and their weight loaders.

A quantized layer holds `weight` (int8, this rank's [out_local, in_local] shard), `weight_scale`
(float32 [out_local], sharded with its rows), optionally `input_scale` (float32 [1], the same on every
rank) and the float `bias` as before. Loaders read only this rank's rows (column-parallel layers) or
columns (row-parallel layers) from a safetensors slice; per-row vectors follow the rows, so a
row-parallel layer holds the full vector (its rows are not split).
"""

from __future__ import annotations

import torch
from torch import nn

from inference.errors import UserError
from inference.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from inference.quant import utils


def shape_of(src) -> tuple[int, ...]:
    return tuple(src.get_shape() if hasattr(src, "get_shape") else src.shape)


def is_int8(src) -> bool:
    return src.get_dtype() == "I8" if hasattr(src, "get_dtype") else src.dtype == torch.int8


def full_rows(layer: LinearBase, shard_id) -> int:
    """Rows of the checkpoint tensor that feeds `layer` (one shard of a merged layer)."""
    if isinstance(layer, MergedColumnParallelLinear):
        return layer.out_sizes[shard_id or 0]
    return layer.full_out


def row_parts(layer: LinearBase, shard_id) -> list[tuple[int, int, int]]:
    """(first source row, row count, first local row) of this rank's rows of the checkpoint tensor."""
    r, tp = layer.tp_rank, layer.tp_size
    if isinstance(layer, RowParallelLinear):
        return [(0, layer.full_out, 0)]
    if isinstance(layer, QKVParallelLinear):
        n = layer.hidden // tp
        return [(i * layer.hidden + r * n, n, i * n) for i in range(3)]
    if isinstance(layer, MergedColumnParallelLinear):
        s = shard_id or 0
        n = layer.out_sizes[s] // tp
        return [(r * n, n, sum(layer.out_sizes[:s]) // tp)]
    n = layer.out_features
    return [(r * n, n, 0)]


def col_range(layer: LinearBase) -> tuple[int, int]:
    if isinstance(layer, RowParallelLinear):
        k = layer.in_features
        return layer.tp_rank * k, (layer.tp_rank + 1) * k
    return 0, layer.full_in


def local_rows(layer: LinearBase, src, shard_id, name: str, matrix: bool) -> list[tuple[int, torch.Tensor]]:
    """(first local row, tensor) pieces of this rank's part of `src` ([rows, in] if matrix, else [rows] or
    [rows, 1])."""
    shape = shape_of(src)
    rows = full_rows(layer, shard_id)
    if matrix:
        want = (rows, layer.full_in)
        ok = shape == want
    else:
        want = (rows,)
        ok = shape in ((rows,), (rows, 1))
    if not ok:
        raise UserError(f"tensor {name}: shape {list(shape)} does not fit the config (expected {list(want)}); "
                        "config.json and the weights disagree, re-create the quantized checkpoint")
    c0, c1 = col_range(layer)
    out = []
    for start, count, dst in row_parts(layer, shard_id):
        if matrix:
            out.append((dst, src[start:start + count, c0:c1]))
        else:
            t = src[start:start + count] if len(shape) == 1 else src[start:start + count, 0:1]
            out.append((dst, torch.as_tensor(t).reshape(-1)))
    return out


def load_int8_weight(layer: LinearBase, param, src, name: str = "", shard_id=None) -> None:
    if not is_int8(src):
        raise UserError(f"tensor {name} is not int8 although config.json says the checkpoint is quantized "
                        f"({layer.quant_method.scheme}); re-create it with qwen-chat quantize")
    for dst, t in local_rows(layer, src, shard_id, name, matrix=True):
        param.data[dst:dst + t.shape[0]].copy_(t)


def load_row_vector(layer: LinearBase, param, src, name: str = "", shard_id=None) -> None:
    for dst, t in local_rows(layer, src, shard_id, name, matrix=False):
        param.data[dst:dst + t.shape[0]].copy_(t)


def load_input_scale(layer: LinearBase, param, src, name: str = "", shard_id=None) -> None:
    """A per-tensor scale [1]; merged layers (w2, w1) share one input, so the larger of the two is kept."""
    t = torch.as_tensor(src[:]).float().reshape(-1)
    if t.numel() != 1 or not bool(t[0] > 0) or not torch.isfinite(t).all():
        raise UserError(f"tensor {name}: expected one positive input scale, got {t.tolist()[:4]}")
    param.data.copy_(torch.maximum(param.data, t.to(param.device)))


def _param(t: torch.Tensor, loader) -> nn.Parameter:
    p = nn.Parameter(t, requires_grad=False)
    p.weight_loader = loader
    return p


def _bind(fn, layer):
    return lambda param, src, name="", shard_id=None: fn(layer, param, src, name, shard_id)


def load_float_quantized(layer: LinearBase, param, src, name: str = "", shard_id=None) -> None:
    """Quantize as read: a float checkpoint tensor (or one drawn at random) becomes this rank's int8 rows and
    their scales, whole rows of about `utils.CHUNK_ELEMENTS` at a time on the layer's device (the float weight
    never exists whole). Equal to quantizing the loaded float weight: rows are scaled independently, and a row
    split over ranks (row-parallel) takes its absmax over the whole row, read here on every rank."""
    rows, shape = full_rows(layer, shard_id), shape_of(src)
    if shape != (rows, layer.full_in):
        raise UserError(f"tensor {name}: shape {list(shape)} does not fit the config (expected "
                        f"{[rows, layer.full_in]}); config.json and the weights disagree, re-download the checkpoint")
    (c0, c1), whole_row = col_range(layer), isinstance(layer, RowParallelLinear) and layer.tp_size > 1
    dev, dtype = param.device, layer.float_dtype
    step = utils.chunk_rows(layer.full_in)
    for start, count, dst in row_parts(layer, shard_id):
        for i in range(0, count, step):
            a, n = start + i, min(step, count - i)
            w = torch.as_tensor(src[a:a + n, :] if whole_row else src[a:a + n, c0:c1]).to(device=dev, dtype=dtype)
            absmax = utils.weight_absmax(w) if whole_row else None
            q, scale = utils.quantize_weight(w[:, c0:c1] if whole_row else w, absmax)
            param.data[dst + i:dst + i + n].copy_(q)
            layer.weight_scale.data[dst + i:dst + i + n].copy_(scale)
            del w, q


def install(layer: LinearBase, method, static_input: bool = False, device=None, float_source: bool = False) -> None:
    """Replace the float weight by empty int8 parameters with loaders; `method` computes the layer. `device`:
    where they live (default: the float weight's). `float_source`: the checkpoint holds the float weight, and
    its loader quantizes it as read (the scales are derived from it, not read)."""
    dev = layer.weight.device if device is None else device
    if not hasattr(layer, "float_dtype"):
        layer.float_dtype = layer.weight.dtype
    n, k = layer.out_features, layer.in_features
    layer.weight = _param(torch.empty(n, k, dtype=torch.int8, device=dev),
                          _bind(load_float_quantized if float_source else load_int8_weight, layer))
    layer.weight_scale = _param(torch.ones(n, dtype=torch.float32, device=dev), _bind(load_row_vector, layer))
    layer.weight.float_source = layer.weight_scale.derived = float_source
    if static_input:
        layer.input_scale = _param(torch.zeros(1, dtype=torch.float32, device=dev), _bind(load_input_scale, layer))
    layer.quant_method = method


def set_quantized(layer: LinearBase, q: torch.Tensor, scale: torch.Tensor, method) -> None:
    """Install already-quantized values (on-the-fly quantization)."""
    layer.float_dtype = layer.weight.dtype
    layer.weight = _param(q, _bind(load_int8_weight, layer))
    layer.weight_scale = _param(scale.float(), _bind(load_row_vector, layer))
    layer.quant_method = method


def restore_float(layer: LinearBase) -> None:
    """Undo `install`: an empty float weight with the layer's own loader (a layer left in float)."""
    dtype = getattr(layer, "float_dtype", layer.weight.dtype)
    for name in ("weight_scale", "input_scale", "input_offset", "quant_bias", "weight_offset"):
        if name in layer._parameters:
            del layer._parameters[name]
        if name in layer._buffers:
            del layer._buffers[name]
    w = torch.empty(layer.out_features, layer.in_features, dtype=dtype, device=layer.weight.device)
    layer.weight = _param(w, layer.weight_loader)
    layer.quant_method = None
