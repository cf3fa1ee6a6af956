"""A decode graph's inputs and greedy tokens through pinned host memory, read and written by small kernels
inside the graph (zero copy over PCIe), so that no copy-engine transfer stands between two replays.

Pinned host memory is mapped into the GPU's address space, so a kernel can load from and store to it
directly. Two host slots alternate by the parity of a device counter of replays: replay r reads input
slot r % 2 (`unpack_inputs`, the graph's first kernel, which also notes the parity for the last one) and
writes its tokens to output slot r % 2 (`tokens_out` or `argmax_finish`, the last kernel, which counts the
replay). The host fills a slot only after the replay that used it two replays before has finished (its
event), and reads a replay's tokens after that replay's event.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PROGRAMS = 16  # of the unpack kernel
BT_BLOCK = 256  # block-table words a program loads before it knows how many there are


@triton.jit
def _unpack_kernel(src_ptr, dst_ptr, bt_ptr, ctr_ptr, par_ptr, SRC_WORDS: tl.constexpr, TOP: tl.constexpr,
                   HEAD: tl.constexpr, HEAD_BLOCK: tl.constexpr, BT_WORDS: tl.constexpr, MAX_BLOCKS: tl.constexpr,
                   BLOCK: tl.constexpr):
    """int32 words of host slot (counter % 2) into the device buffers: the header (int64 ids, positions,
    slots, lengths, then width, rows, ids-from-host; the ids only when that flag is set) into dst, and the
    rows x width block-table words after it into the rows of the full-width table bt. Every load that does
    not need the header's counts is issued with the header's (each is a round trip over PCIe)."""
    pid = tl.program_id(0)
    c = tl.load(ctr_ptr)
    tl.store(par_ptr, c & 1, mask=pid == 0)
    src = src_ptr + (c & 1) * SRC_WORDS
    meta = src.to(tl.pointer_type(tl.int64)) + 4 * TOP
    h = pid * HEAD_BLOCK + tl.arange(0, HEAD_BLOCK)
    head = tl.load(src + h, mask=h < HEAD)
    b = pid * BLOCK + tl.arange(0, BLOCK)
    bt = tl.load(src + HEAD + b, mask=b < BT_WORDS)
    width, rows, from_host = tl.load(meta), tl.load(meta + 1), tl.load(meta + 2)
    tl.store(dst_ptr + h, head, mask=(h < HEAD) & ((h >= 2 * TOP) | (from_host != 0)))
    total = rows * width
    w = tl.maximum(width, 1)
    tl.store(bt_ptr + (b // w) * MAX_BLOCKS + b % w, bt, mask=b < total)
    for start in range((tl.num_programs(0) + pid) * BLOCK, total, tl.num_programs(0) * BLOCK):  # long tables
        r = start + tl.arange(0, BLOCK)
        tl.store(bt_ptr + (r // w) * MAX_BLOCKS + r % w, tl.load(src + HEAD + r, mask=r < total), mask=r < total)


@triton.jit
def _tokens_out_kernel(ids_ptr, out_ptr, ctr_ptr, par_ptr, BS: tl.constexpr, TOP: tl.constexpr,
                       BLOCK: tl.constexpr):
    """The step's ids (the greedy tokens the graph just took) into host slot (parity); count the replay."""
    i = tl.arange(0, BLOCK)
    ok = i < BS
    tl.store(out_ptr + tl.load(par_ptr) * TOP + i, tl.load(ids_ptr + i, mask=ok), mask=ok)
    tl.store(ctr_ptr, tl.load(ctr_ptr) + 1)


@triton.jit
def _argmax_finish_kernel(best_ptr, ids_ptr, out_ptr, ctr_ptr, par_ptr, TILES, TOP: tl.constexpr,
                          MAPPED: tl.constexpr, BLOCK: tl.constexpr):
    """Row m's argmax from each lm_head tile's (largest value, its first column): the largest value, the
    first column among ties (as torch.argmax). Into ids[m] and, mapped, host slot (parity); program 0
    counts the replay."""
    m = tl.program_id(0)
    row = best_ptr + m.to(tl.int64) * (2 * TILES)
    t = tl.arange(0, BLOCK)
    top = tl.full([BLOCK], -float("inf"), tl.float32)
    col = tl.full([BLOCK], 2147483647, tl.int32)
    for start in range(0, TILES, BLOCK):
        ok = start + t < TILES
        v = tl.load(row + start + t, mask=ok, other=-float("inf"))
        c = tl.load(row + TILES + start + t, mask=ok, other=0.0).to(tl.int32, bitcast=True)
        take = ok & ((v > top) | ((v == top) & (c < col)))
        top = tl.where(take, v, top)
        col = tl.where(take, c, col)
    tok = tl.min(tl.where(top == tl.max(top, 0), col, 2147483647), 0).to(tl.int64)
    tl.store(ids_ptr + m, tok)
    if MAPPED:
        tl.store(out_ptr + tl.load(par_ptr) * TOP + m, tok)
        tl.store(ctr_ptr, tl.load(ctr_ptr) + 1, mask=m == 0)


def unpack_inputs(host_in: torch.Tensor, dev: torch.Tensor, block_tables: torch.Tensor, ctr: torch.Tensor,
                  par: torch.Tensor, top: int) -> None:
    """host_in: pinned int32 [2, words]; dev: the int32 header on the GPU; block_tables: int32 [top, max blocks]
    on the GPU; ctr, par: int64 [1] on the GPU."""
    head = dev.shape[0]
    _unpack_kernel[(PROGRAMS,)](host_in, dev, block_tables, ctr, par, SRC_WORDS=host_in.shape[1], TOP=top, HEAD=head,
                                HEAD_BLOCK=triton.next_power_of_2(triton.cdiv(head, PROGRAMS)),
                                BT_WORDS=host_in.shape[1] - head, MAX_BLOCKS=block_tables.shape[1], BLOCK=BT_BLOCK,
                                num_warps=4)


def tokens_out(ids: torch.Tensor, host_out: torch.Tensor, ctr: torch.Tensor, par: torch.Tensor) -> None:
    """ids: int64 [bs] on the GPU; host_out: pinned int64 [2, top]."""
    bs = ids.shape[0]
    _tokens_out_kernel[(1,)](ids, host_out, ctr, par, BS=bs, TOP=host_out.shape[1],
                             BLOCK=triton.next_power_of_2(bs), num_warps=1)


def argmax_finish(best: torch.Tensor, ids: torch.Tensor, host_out: torch.Tensor | None, ctr: torch.Tensor,
                  par: torch.Tensor) -> None:
    """best: [rows, 2 * tiles] from `skinny_gemm(..., argmax=True)`; ids: int64 [rows] on the GPU; host_out:
    pinned int64 [2, top], or None (the tokens stay on the GPU and nothing is counted)."""
    rows, tiles = best.shape[0], best.shape[1] // 2
    mapped = host_out is not None
    _argmax_finish_kernel[(rows,)](best, ids, host_out if mapped else ids, ctr, par, tiles,
                                   TOP=host_out.shape[1] if mapped else 0, MAPPED=mapped, BLOCK=512, num_warps=4)
