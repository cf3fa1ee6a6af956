"""Prefill attention on the CPU: the padded causal path (cuDNN's on CUDA) equals plain causal attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

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


class OpLog(TorchDispatchMode):
    """The aten ops run inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_gather_context_copies_the_context_once():
    """The head-major cache view ([blocks, slots, heads, dim] over [blocks, heads, slots, dim] memory), as the
    model runner allocates it: the gathered context is exact and made by one copying op (it was an index and
    then a second copy of everything to merge the block and slot dims), every layer at every prefix step."""
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(12, 4, 16, 8, generator=g).transpose(1, 2)  # 12 blocks of 16 slots, 4 heads, dim 8
    table = torch.tensor([7, 2, 9, 0, 5, 0, 0])  # padded past the sequence's 5 blocks
    ref = torch.cat([cache[b] for b in [7, 2, 9, 0, 5]])[:70]
    with OpLog() as log:
        out = attention.gather_context(cache, table, 70)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    copying = [op for op in log.ops if op not in ("slice", "view", "reshape", "_reshape_alias", "alias")]
    assert copying == ["index_select"], log.ops


def test_cudnn_inputs_have_one_layout_padded_or_not(monkeypatch):
    """A length that is a multiple of the bucket gives cuDNN the layout a padded one does (contiguous), so the
    plan the engine warm-up builds for the bucket serves it: no plan built inside a user's turn."""
    monkeypatch.setattr(attention, "CUDNN_BUCKET", 64)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append([t.stride() for t in (q, k, v)])
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(1)
    for n in (63, 64):
        qkv = torch.randn(n, 3, 4, 16, generator=g)
        q, k, v = qkv[:, 0].contiguous(), qkv[:, 1].contiguous(), qkv[:, 2]  # v: a strided view, as the model's
        attention.causal_cudnn(q, k, v, 0.25)
    assert seen[0] == seen[1]
