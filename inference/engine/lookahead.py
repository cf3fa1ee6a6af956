"""Decode lookahead (CUDA graphs, greedy): launch step N+1 with step N's tokens while they are still on the
GPU, then read step N's tokens back. The host's bookkeeping overlaps the GPU instead of idling it.

Under tensor parallelism rank 0 sends the next step's plan as an "ahead" op and broadcasts step N's tokens
over the device group; every rank then runs step N+1 (`run_ahead_step` on ranks > 0), all before rank 0 waits.

If the next call's batch is not exactly the one launched ahead (a request finished, was cancelled or
admitted), the ahead result is dropped; its K/V writes are overwritten in stream order by later steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference import distributed as dist
from inference.engine.cuda_graph import read_back
from inference.engine.model_runner import StepPlan
from inference.engine.sequence import Sequence


@dataclass
class LaunchedStep:
    """A decode step launched ahead: its sequences, each one's position, its logits (still computing)."""

    seqs: list[Sequence]
    positions: list[int]
    logits: torch.Tensor


class Lookahead:
    def __init__(self, engine, max_seqs: int = 256):
        self.engine = engine
        self.pending: LaunchedStep | None = None
        self.host = torch.zeros(max_seqs, dtype=torch.long, pin_memory=True)

    def launched_logits(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor | None:
        """The logits of the step launched ahead, if it is exactly this batch (else None: it is dropped)."""
        ahead, self.pending = self.pending, None
        if ahead is None or len(ahead.seqs) != len(batch):
            return None
        for (seq, n), launched, pos in zip(batch, ahead.seqs, ahead.positions):
            if seq is not launched or n != 1 or seq.num_computed != pos:
                return None
        return ahead.logits

    def _eligible(self, batch, plan: StepPlan) -> bool:
        e = self.engine
        return (len(batch) <= self.host.numel() and plan.num_decodes == len(batch) and e.runner.graphable(plan)
                and all(s.params.greedy and s.params.repetition_penalty == 1.0 and s.params.logits == "none"
                        and s.params.logprobs is None and s.params.prompt_logprobs is None
                        and s.num_completion + 1 < s.params.max_new_tokens and len(s) + 1 < e.max_model_len
                        for s, _ in batch))

    def tokens(self, batch, plan: StepPlan, logits: torch.Tensor) -> list[int] | None:
        """Greedy tokens of this step, after launching the next step when possible; None: not eligible."""
        if not self._eligible(batch, plan):
            return None
        bm = self.engine.block_manager
        seqs = [s for s, _ in batch]
        n = len(seqs)
        taken = self.engine.runner.graphs.greedy_tokens(logits)  # eligible: graphable, so graphs exist
        if taken is None:  # not the last replay's rows (not expected): take them here
            tokens_dev = logits.argmax(-1)
            taken = tokens_dev, read_back(tokens_dev, self.host[:n])
        tokens_dev, read = taken
        need = sum(max(0, bm.blocks_needed(len(s) + 1) - len(s.block_table)) for s in seqs)
        if need <= bm.num_free:
            for s in seqs:
                bm.append_slots(s, len(s) + 1)
            nxt = StepPlan([0] * n, [len(s) for s in seqs], [1] * n, [len(s) + 1 for s in seqs],
                           [list(s.block_table) for s in seqs], [s.ntk_alpha for s in seqs], n, [False] * n,
                           list(range(n)))
            if self.engine.runner.graphable(nxt):
                dist.broadcast_object(("ahead", nxt))
                dist.broadcast_tensor(tokens_dev)
                self.pending = LaunchedStep(seqs, nxt.positions, self.engine.runner.run_graph(nxt, tokens_dev))
        return read()


def run_ahead_step(runner, plan: StepPlan) -> None:
    """Ranks > 0: run the decode step rank 0 launched ahead, on the tokens it broadcasts."""
    tokens = torch.empty(len(plan.token_ids), dtype=torch.long, device=runner.device)
    runner.run_graph(plan, dist.broadcast_tensor(tokens))
