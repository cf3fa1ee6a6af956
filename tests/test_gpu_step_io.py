"""CUDA: a decode graph's step I/O kernels (inputs and greedy tokens through pinned host slots) and the
lm_head argmax partials they finish from (run on the lent GPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_step_io_moves_inputs_and_tokens_through_pinned_slots():
    """The decode graph's first kernel copies host slot (counter % 2) into the device buffers: the header
    (the ids only when flagged) and rows x width block-table words into the rows of the full-width table,
    nothing more, and notes the parity; its last one writes the ids into host slot (parity) and counts the
    replay."""
    from inference.kernels.step_io import tokens_out, unpack_inputs

    top, head = 4, 2 * (4 * 4 + 3)
    words = head + 4 * 8
    host_in = torch.full((2, words), -5, dtype=torch.int32).pin_memory()  # slot 0 must not be read
    header = host_in[1, :head].view(torch.long)
    header[:16] = torch.arange(100, 116)
    header[16:] = torch.tensor([3, 2, 0])  # width 3, 2 rows, the ids stay on the device
    host_in[1, head:] = torch.arange(50, 50 + 4 * 8, dtype=torch.int32)
    dev = torch.full((head,), 7, dtype=torch.int32, device="cuda")
    table = torch.full((top, 8), 7, dtype=torch.int32, device="cuda")
    ctr, par = torch.ones(1, dtype=torch.long, device="cuda"), torch.zeros(1, dtype=torch.long, device="cuda")
    unpack_inputs(host_in, dev, table, ctr, par, top)
    got = dev.cpu()
    assert (got[: 2 * top] == 7).all() and par.item() == 1
    assert got[2 * top:].view(torch.long).tolist() == list(range(104, 116)) + [3, 2, 0]
    want = torch.full((top, 8), 7, dtype=torch.int32)
    want[0, :3], want[1, :3] = torch.tensor([50, 51, 52]), torch.tensor([53, 54, 55])
    assert torch.equal(table.cpu(), want)
    header[18] = 1  # now the ids too
    unpack_inputs(host_in, dev, table, ctr, par, top)
    assert dev[: 2 * top].view(torch.long).tolist() == [100, 101, 102, 103]
    host_out = torch.zeros(2, top, dtype=torch.long).pin_memory()
    tokens_out(torch.tensor([9, 8, 7], device="cuda"), host_out, ctr, par)
    torch.cuda.synchronize()
    assert host_out.tolist() == [[0] * 4, [9, 8, 7, 0]] and ctr.item() == 2
    host_in[0] = host_in[1]
    unpack_inputs(host_in, dev, table, ctr, par, top)  # counter 2: slot 0, parity 0
    tokens_out(torch.tensor([4, 5, 6], device="cuda"), host_out, ctr, par)
    torch.cuda.synchronize()
    assert host_out.tolist() == [[4, 5, 6, 0], [9, 8, 7, 0]] and ctr.item() == 3 and par.item() == 0


@pytest.mark.parametrize("m", [2, 16, 33, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lm_head_argmax_partials_give_torch_argmax(m, dtype):
    """lm_head's skinny GEMM also writes each tile's largest logit (as stored) and its first column; the
    finishing kernel's tokens equal torch.argmax of the logits, ties going to the first column (a weight row
    copied to an earlier column in another tile, and to a later one in the same tile), into the ids and the
    host slot of the noted parity, and it counts the replay."""
    from inference.kernels.skinny import skinny_gemm
    from inference.kernels.step_io import argmax_finish

    g = torch.Generator(device="cuda").manual_seed(m)
    n, k = 40000, 512  # lm_head's tiles (n >= 32768); the last tile is partial
    w = torch.randn(n, k, generator=g, device="cuda").to(dtype)
    x = torch.randn(m, k, generator=g, device="cuda").to(dtype)
    top = (x.float() @ w.float().T).argmax(-1).tolist()
    w[max(top[0] - 300, 0)] = w[top[0]]  # row 0: the same largest logit in an earlier tile
    w[min(top[1] + 1, n - 1)] = w[top[1]]  # row 1: and next to it
    y, best = skinny_gemm(x, w, argmax=True)
    ids = torch.full((m,), -1, dtype=torch.long, device="cuda")
    host_out = torch.zeros(2, 64, dtype=torch.long).pin_memory()
    ctr, par = torch.zeros(1, dtype=torch.long, device="cuda"), torch.ones(1, dtype=torch.long, device="cuda")
    argmax_finish(best, ids, host_out, ctr, par)
    torch.cuda.synchronize()
    want = torch.argmax(y, -1)
    assert y[0, max(top[0] - 300, 0)] == y[0, top[0]] and y[1, min(top[1] + 1, n - 1)] == y[1, top[1]]  # ties
    assert torch.equal(ids, want) and host_out[1, :m].tolist() == want.tolist() and ctr.item() == 1
