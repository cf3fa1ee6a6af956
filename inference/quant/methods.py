"""Linear methods for quantized layers: `LinearBase.matmul` calls `layer.quant_method.apply(layer, x)`.

Each method has a reference path in plain torch (CPU, NPU, float32 on CUDA) and, on CUDA with fp16/bf16
activations, a fast path through `ops` (Triton W8A16 with the dequantization fused; W8A8 with a
fused per-token quantization kernel, int8 tensor cores and a fused dequantization epilogue).

W8A8 on a row-parallel layer split over several ranks: with dynamic scales every rank quantizes its
slice of a token with the token's scale over the whole row (one all-reduce of [tokens] maxima), so
the result equals tp=1; static scales are the same on every rank anyway.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from inference.layers.linear import RowParallelLinear
from inference.quant import utils

_FAST_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _kernels():
    """The Triton entry points (`ops`), or None (no Triton, or it failed to import)."""
    try:
        from inference.quant import ops  # needs triton
    except Exception:  # noqa: BLE001 - any import failure means: use the reference path
        return None
    return ops


def fast_path(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in _FAST_DTYPES and _kernels() is not None


def _offset_correction(layer, x2: torch.Tensor) -> torch.Tensor | None:
    """Asymmetric int8 weights (msmodelslim W8A16): x (q - o)^T s = x q^T s - (sum_k x) (o s)."""
    off = getattr(layer, "weight_offset", None)
    if off is None:
        return None
    return x2.float().sum(-1, keepdim=True) * (off * layer.weight_scale)[None, :]


def w8a16_reference(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias=None) -> torch.Tensor:
    y = (x.float() @ w.float().t()) * scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w8a8_reference(xq: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
                   quant_bias=None, bias=None, out_dtype=torch.float32) -> torch.Tensor:
    acc = utils.int8_matmul(xq, w)
    if quant_bias is not None:
        acc = acc + quant_bias[None, :]
    y = acc.float() * row_scale.float().reshape(-1, 1) * col_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class W8A16LinearMethod:
    scheme = "w8a16"

    def apply_gated(self, layer, x: torch.Tensor) -> torch.Tensor | None:
        """silu(x gate^T) * (x up^T) of a merged [gate; up] layer in one kernel at 1-64 tokens on CUDA (no bias
        or weight offset), else None: the caller runs `apply` and its own SiLU gate."""
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        if (not fast_path(x2) or not 0 < x2.shape[0] <= _kernels().DECODE_MAX_M or layer.bias is not None
                or getattr(layer, "weight_offset", None) is not None):
            return None
        k = _kernels()
        if x2.shape[0] == 1:
            y = k.w8a16_gemv(x2, layer.weight, layer.weight_scale, gated=True)
        else:
            y = k.decode_ops.w8a16_skinny(x2, layer.weight, layer.weight_scale, gated=True)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if fast_path(x2):
            y = _kernels().w8a16_linear(x2, layer.weight, layer.weight_scale, layer.bias)
        else:
            y = w8a16_reference(x2, layer.weight, layer.weight_scale, layer.bias)
        corr = _offset_correction(layer, x2)
        if corr is not None:
            y = (y.float() - corr).to(x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class W8A8LinearMethod:
    """int8 x int8 -> int32, then y = (acc + quant_bias) * row_scale * weight_scale + bias.

    static: one input scale (and optional offset, from msmodelslim) per layer; else per-token scales.
    `quant_bias` (int32, msmodelslim) folds the float bias and the input offset's correction.
    """

    scheme = "w8a8"

    def __init__(self, static: bool = False):
        self.static = static

    def _token_scales(self, layer, x2: torch.Tensor) -> torch.Tensor | None:
        """Per-token scales over the whole row when the row is split over ranks, else None (local)."""
        if not isinstance(layer, RowParallelLinear) or layer.tp_size == 1 or not dist.is_initialized():
            return None
        amax = x2.abs().amax(dim=-1).float()
        dist.all_reduce(amax, op=dist.ReduceOp.MAX)
        return utils.row_scales(amax)

    def _quantize(self, layer, x2: torch.Tensor, k):
        """(int8 x, row scale): the layer's static scale, or per-token scales."""
        if self.static:
            row_scale, off = layer.input_scale, getattr(layer, "input_offset", None)
            quantize = k.quantize_static if k is not None else utils.quantize_static
            return quantize(x2, row_scale, off), row_scale
        given = self._token_scales(layer, x2)
        return k.quantize_per_token(x2, given) if k is not None else utils.quantize_per_token(x2, given)

    def apply_gated(self, layer, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up of a merged [gate; up] layer in one kernel at one token on CUDA (no bias), else None."""
        x2 = x.reshape(-1, x.shape[-1])
        if not fast_path(x2) or x2.shape[0] != 1 or layer.bias is not None or not _kernels().words(layer.weight):
            return None
        k = _kernels()
        xq, row_scale = self._quantize(layer, x2, k)
        y = k.w8a8_gemv(xq, layer.weight, row_scale, layer.weight_scale, getattr(layer, "quant_bias", None),
                        out_dtype=x.dtype, gated=True)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        qb, bias = getattr(layer, "quant_bias", None), layer.bias
        k = _kernels() if fast_path(x2) else None
        xq, row_scale = self._quantize(layer, x2, k)
        if k is not None:
            y = k.int8_linear(xq, layer.weight, row_scale, layer.weight_scale, qb, bias, x.dtype)
        else:
            y = w8a8_reference(xq, layer.weight, row_scale, layer.weight_scale, qb, bias, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])
