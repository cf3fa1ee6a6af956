"""Decode steps replayed from CUDA graphs captured per batch-size bucket (nano-vllm style, by hand).

All inputs live in static device buffers; a step copies its ids/positions/slots/lengths (one packed
copy) and the used part of the block table, then replays. Padded rows have slot -1 and length 0, so
they neither write the cache nor attend.
"""

from __future__ import annotations

import torch

from inference.layers.attention import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


class DecodeGraphs:
    def __init__(self, model, rotary, max_bs: int, max_blocks: int, device):
        self.model, self.rotary, self.device = model, rotary, device
        self.buckets = [b for b in BUCKETS if b <= max_bs] or [1]
        top = self.buckets[-1]
        self.max_bs, self.max_blocks = top, max_blocks
        self.packed = torch.zeros(4 * top, dtype=torch.long, device=device)
        self.ids, self.pos, self.slots, self.ctx = self.packed.view(4, top).unbind(0)
        self.block_tables = torch.zeros(top, max_blocks, dtype=torch.int32, device=device)
        # pinned staging, double-buffered: a copy never waits for the GPU, and the buffer of step N is
        # only refilled for step N + 2, after step N's tokens were read back.
        self.host = [torch.zeros(4 * top, dtype=torch.long, pin_memory=True) for _ in range(2)]
        self.host_bt = [torch.zeros(top * max_blocks, dtype=torch.int32, pin_memory=True) for _ in range(2)]
        self.turn = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        self.cos_table, self.sin_table = rotary.table(1.0, 1)

    def _forward(self, bs: int) -> torch.Tensor:
        pos = self.pos[:bs]
        cos, sin = self.cos_table[pos], self.sin_table[pos]
        meta = AttentionMetadata(slot_mapping=self.slots[:bs], block_tables=self.block_tables[:bs],
                                 context_lens=self.ctx[:bs], q_lens=[1] * bs, ctx_lens=[1] * bs, num_decodes=bs,
                                 max_ctx=1, prefix_free=[False] * bs)
        hidden = self.model(self.ids[:bs], cos, sin, None, meta)
        return self.model.compute_logits(hidden)

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
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int, max_ctx: int) -> bool:
        return num_seqs <= self.max_bs and max_ctx <= self.cos_table.shape[0]

    def run(self, token_ids, positions, slots, ctx_lens, block_tables: torch.Tensor,
            ids_device: torch.Tensor | None = None) -> torch.Tensor:
        """Replay for these decode rows; `ids_device` (the previous step's tokens, still on the GPU)
        replaces `token_ids`. Returns the logits rows (a view of the graph's output buffer; None on ranks
        other than 0)."""
        n = len(token_ids)
        bs = next(b for b in self.buckets if b >= n)
        pad = bs - n
        host, host_bt = self.host[self.turn], self.host_bt[self.turn]
        self.turn ^= 1
        # Host sides contiguous (the packed buffer whole, the block table rows packed): torch stages a strided
        # host tensor through pageable memory, and that copy waited for the GPU, so the host fell out of step.
        host.view(4, self.max_bs)[:, :bs].copy_(torch.tensor(
            [[*token_ids, *[0] * pad], [*positions, *[0] * pad], [*slots, *[-1] * pad], [*ctx_lens, *[0] * pad]]))
        self.packed.copy_(host, non_blocking=True)
        if ids_device is not None:
            self.ids[:n].copy_(ids_device, non_blocking=True)
        w = block_tables.shape[1]
        staged = host_bt[: n * w].view(n, w)
        staged.copy_(block_tables)
        self.block_tables[:n, :w].copy_(staged, non_blocking=True)
        self.graphs[bs].replay()
        out = self.outputs[bs]  # None on ranks > 0 of tensor parallelism (the logits are gathered to rank 0)
        return None if out is None else out[:n]
