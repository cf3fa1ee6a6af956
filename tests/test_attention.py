"""Prefill attention on the CPU: the padded causal path (cuDNN's on CUDA) equals plain causal attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference.layers import attention


@pytest.mark.parametrize("n", [1, 37, 64, 100])
def test_padded_causal_equals_unpadded(monkeypatch, n):
    monkeypatch.setattr(attention, "CUDNN_BUCKET", 64)  # pads 37 -> 64 and 100 -> 128; 64 stays
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(n, 4, 16, generator=g, dtype=torch.float64) for _ in range(3))
    out = attention.causal_cudnn(q, k, v, 0.25)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                         scale=0.25).transpose(0, 1)
    assert out.shape == (n, 4, 16)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
