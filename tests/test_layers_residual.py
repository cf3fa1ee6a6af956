"""CPU: a row-parallel linear returns one tensor; the residual stream adds a sublayer's projection and norms."""

from __future__ import annotations

import pytest
import torch

from inference.layers.layernorm import RMSNorm
from inference.layers.linear import RowParallelLinear
from inference.layers.residual import Deferred, ResidualStream
from inference.quant.apply import quantize_layer
from inference.quant.msmodelslim import BiasedRMSNorm


def make_linear(k: int, n: int, bias: bool, seed: int = 0) -> RowParallelLinear:
    g = torch.Generator().manual_seed(seed)
    lin = RowParallelLinear(k, n, bias=bias)
    lin.weight.data.copy_(torch.randn(n, k, generator=g) / k**0.5)
    if bias:
        lin.bias.data.copy_(torch.randn(n, generator=g))
    return lin


def make_norm(n: int, biased: bool) -> RMSNorm:
    g = torch.Generator().manual_seed(1)
    norm = BiasedRMSNorm(n, 1e-6, torch.float32, "cpu") if biased else RMSNorm(n, 1e-6)
    norm.weight.data.uniform_(0.5, 1.5, generator=g)
    if biased:
        norm.bias.data.normal_(0, 0.1, generator=g)
    return norm


def rms(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    x = x.double()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    return y + norm.bias.double() if hasattr(norm, "bias") else y


@pytest.mark.parametrize("rows", [0, 1, 5, 100])
@pytest.mark.parametrize("bias", [False, True])
def test_row_parallel_linear_returns_one_tensor(rows, bias):
    """x W^T (+ b) as one tensor at every size; a residual is not its business (ResidualStream adds it)."""
    lin = make_linear(48, 32, bias)
    x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows))
    y = lin(x)
    assert isinstance(y, torch.Tensor) and y.shape == (rows, 32)
    want = x.double() @ lin.weight.double().T + (lin.bias.double() if bias else 0)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        lin(x, torch.zeros(rows, 32))


def test_quantized_row_parallel_linear_returns_one_tensor():
    lin = make_linear(64, 32, False)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(2))
    want = x @ lin.weight.T
    quantize_layer(lin, "w8a16")
    y = lin(x)
    assert isinstance(y, torch.Tensor) and y.shape == (6, 32)
    assert (y - want).norm() / want.norm() < 1e-2


@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("quant", [None, "w8a16", "w8a8"])
def test_residual_stream_norms_the_sum_with_the_pending_projection(biased, quant):
    """x.add(proj(a)).norm(ln) is ln(x + proj(a)), and the stream then holds x + proj(a)."""
    g = torch.Generator().manual_seed(3)
    lin, norm = make_linear(64, 32, False), make_norm(32, biased)
    if quant:
        quantize_layer(lin, quant)
    a, start = torch.randn(5, 64, generator=g), torch.randn(5, 32, generator=g)
    total = start.double() + lin(a).double()
    x = ResidualStream(start.clone()).add(Deferred(lin, a))
    h = x.norm(norm)
    torch.testing.assert_close(x.stream.double(), total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.double(), rms(total, norm), rtol=1e-4, atol=1e-4)
    assert x.pending is None


def test_residual_stream_value_and_a_norm_without_a_pending_output():
    g = torch.Generator().manual_seed(4)
    lin, norm = make_linear(16, 8, True), make_norm(8, False)
    start, a = torch.randn(3, 8, generator=g), torch.randn(3, 16, generator=g)
    x = ResidualStream(start)
    torch.testing.assert_close(x.norm(norm).double(), rms(start, norm), rtol=1e-5, atol=1e-5)
    assert x.stream is start  # nothing pending: the stream is as it was
    y = x.add(Deferred(lin, a))
    y2 = y.add(Deferred(lin, a))  # a second output before any norm: the first is added unfused
    torch.testing.assert_close(y2.value(), start + 2 * lin(a), rtol=1e-5, atol=1e-5)
