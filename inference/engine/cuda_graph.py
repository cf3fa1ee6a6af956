"""Decode steps replayed from CUDA graphs captured per batch-size bucket (nano-vllm style, by hand).

A step's inputs (ids, positions, slots, lengths and the block table's rows at the step's own width) are
written into a pinned host slot, and the graph's first kernel reads them from there into the static
buffers (`inference/kernels/step_io.py`: zero copy). The graph ends with the greedy argmax
written into the ids, the next step's input, and into a pinned host slot the host reads. So nothing but the
graph launch stands between two replays; a greedy next step (decode lookahead) sends everything but the
ids. QWEN_CHAT_MAPPED_IO=0 (`envs`) sends the inputs with copies before the replay and reads the tokens
back with another. Padded rows have slot -1 and length 0, so they neither write the cache nor attend.
"""

from __future__ import annotations

import torch

from inference import envs
from inference.kernels import ROW_GROUP
from inference.layers.attention import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


def reader(done: torch.cuda.Event, host: torch.Tensor):
    """A function that waits for `done` only, then gives pinned `host`'s values as a list."""
    def read() -> list[int]:
        done.synchronize()
        return host.tolist()
    return read


def read_back(dev: torch.Tensor, host: torch.Tensor):
    """Queue a copy of `dev` into pinned `host`; returns its `reader`."""
    host.copy_(dev, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return reader(done, host)


class DecodeGraphs:
    """`grouped_rows`: graphs for prefill chunks as rows, each sequence's rows in aligned groups of ROW_GROUP
    (the attention takes a group at once), at the buckets that are multiples of ROW_GROUP; `pool`: share
    another instance's memory pool (never replayed at the same time)."""

    def __init__(self, model, rotary, max_bs: int, max_blocks: int, device, grouped_rows: bool = False, pool=None):
        self.model, self.rotary, self.device, self.grouped_rows = model, rotary, device, grouped_rows
        step = ROW_GROUP if grouped_rows else 1
        self.buckets = [b for b in BUCKETS if b <= max_bs and b % step == 0] or [step]
        top = self.buckets[-1]
        self.max_bs, self.max_blocks = top, max_blocks
        self.mapped = envs.MAPPED_IO
        # int32 words: a header of int64 ids, positions, slots, lengths (a row of `top` each), then the block
        # table's width, the rows it holds and whether the ids come from the host; then the block table's rows.
        self.head = 2 * (4 * top + 3)
        words = self.head + top * max_blocks + 1 & ~1  # even: both host slots start 8-byte aligned
        self.dev = torch.zeros(self.head, dtype=torch.int32, device=device)
        header = self.dev.view(torch.long)
        self.ids, self.pos, self.slots, self.ctx = header[: 4 * top].view(4, top).unbind(0)
        self.block_tables = torch.zeros(top, max_blocks, dtype=torch.int32, device=device)
        # pinned host slots, two in turn: slot r % 2 is refilled for replay r once replay r - 2 is done
        self.host_in = torch.zeros(2, words, dtype=torch.int32).pin_memory()
        self.host_in[:, : self.head].view(torch.long)[:, 2 * top: 3 * top].fill_(-1)  # slots: write nothing
        self.host_out = torch.zeros(2, top, dtype=torch.long).pin_memory()
        self.ctr = torch.zeros(1, dtype=torch.long, device=device)  # replays so far (its parity picks the slot)
        self.count = 0  # the same, on the host
        self.par = torch.zeros(1, dtype=torch.long, device=device)  # this replay's slot, for its last kernel
        self.done: list[torch.cuda.Event | None] = [None, None]
        self.last: int | None = None  # the bucket of the last replay (its slot: (count - 1) % 2)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = pool
        self.cos_table, self.sin_table = rotary.table(1.0, 1)

    def _forward(self, bs: int) -> torch.Tensor:
        from inference.kernels.step_io import argmax_finish, tokens_out, unpack_inputs  # Triton

        if self.mapped:
            unpack_inputs(self.host_in, self.dev, self.block_tables, self.ctr, self.par, self.max_bs)
        pos = self.pos[:bs]
        cos, sin = self.cos_table[pos], self.sin_table[pos]
        meta = AttentionMetadata(slot_mapping=self.slots[:bs], block_tables=self.block_tables[:bs],
                                 context_lens=self.ctx[:bs], q_lens=[1] * bs, ctx_lens=[1] * bs, num_decodes=bs,
                                 max_ctx=1, no_cached_prefix=[False] * bs, grouped_rows=self.grouped_rows)
        hidden = self.model(self.ids[:bs], cos, sin, None, meta)
        # greedy tokens into the ids (the next step's input) and, mapped, into the host slot
        logits, best = self.model.compute_logits(hidden, argmax=True)
        if best is not None:  # from lm_head's per-tile partials
            argmax_finish(best, self.ids[:bs], self.host_out if self.mapped else None, self.ctr, self.par)
            return logits
        if logits is not None:
            torch.argmax(logits, -1, out=self.ids[:bs])
        if self.mapped:
            tokens_out(self.ids[:bs], self.host_out, self.ctr, self.par)
        return logits

    @torch.inference_mode()
    def capture(self) -> None:
        self.slots.fill_(-1)
        for bs in reversed(self.buckets):
            self._forward(bs)  # warm up (Triton compiles, cuBLAS picks kernels)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                self.outputs[bs] = self._forward(bs)
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[bs] = g
        self.ctr.zero_()  # the warm-ups counted themselves
        torch.cuda.synchronize()

    def bucket(self, rows: int) -> int:
        """The graph a replay of this many rows takes (rows <= max_bs)."""
        return next((b for b in self.buckets if b >= rows), self.max_bs)

    def can_run(self, num_seqs: int, max_ctx: int) -> bool:
        return num_seqs <= self.max_bs and max_ctx <= self.cos_table.shape[0]

    def run(self, token_ids, positions, slots, ctx_lens, block_tables: torch.Tensor,
            ids_device: torch.Tensor | None = None) -> torch.Tensor:
        """Replay for these decode rows; `ids_device` (the previous step's tokens, still on the GPU)
        replaces `token_ids`. Returns the logits rows (a view of the graph's output buffer; None on ranks
        other than 0)."""
        n = len(token_ids)
        bs = self.bucket(n)
        pad, top, turn = bs - n, self.max_bs, self.count & 1
        if self.done[turn] is not None:  # replay r - 2 read this slot, and its tokens were read (long since)
            self.done[turn].synchronize()
        host = self.host_in[turn]
        header = host[: self.head].view(torch.long)
        header[: 4 * top].view(4, top)[:, :bs].copy_(torch.tensor(
            [[*token_ids, *[0] * pad], [*positions, *[0] * pad], [*slots, *[-1] * pad], [*ctx_lens, *[0] * pad]]))
        rows, w = block_tables.shape
        # The ids are already in place when they are the last replay's greedy tokens (taken in the graph).
        in_place = ids_device is not None and ids_device.data_ptr() == self.ids.data_ptr()
        header[4 * top:] = torch.tensor([w, rows, int(ids_device is None)])
        host[self.head: self.head + rows * w].copy_(block_tables.view(-1))
        if not self.mapped:  # the header with one copy, the block table's rows with another (strided)
            lo = 2 * top if in_place else 0
            self.dev[lo:].copy_(host[lo: self.head], non_blocking=True)
            self.block_tables[:rows, :w].copy_(host[self.head: self.head + rows * w].view(rows, w), non_blocking=True)
        if ids_device is not None and not in_place:
            self.ids[:n].copy_(ids_device, non_blocking=True)
        self.graphs[bs].replay()
        self.done[turn] = torch.cuda.Event()
        self.done[turn].record()
        self.count += 1
        self.last = bs
        out = self.outputs[bs]  # None on ranks > 0 of tensor parallelism (the logits are gathered to rank 0)
        return None if out is None else out[:n]

    def greedy_tokens(self, logits: torch.Tensor):
        """For `logits` that are the last replay's output rows: (their greedy tokens on the GPU, which the
        graph took into the ids buffer, where the next replay reads them without a copy; a function that
        returns them as a list: it waits for this replay only). None otherwise."""
        out = self.outputs.get(self.last) if self.last is not None else None
        if out is None or logits.data_ptr() != out.data_ptr():
            return None
        n, turn = logits.shape[0], (self.count - 1) & 1
        dev, host = self.ids[:n], self.host_out[turn, :n]
        return dev, reader(self.done[turn], host) if self.mapped else read_back(dev, host)
