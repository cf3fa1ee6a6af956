"""Continuous batching: requests join and leave between steps; decodes and prefill chunks share a step.

Each step has a token budget. Running sequences go first (decodes, then unfinished prefills), then
waiting ones are admitted while blocks and budget allow. When blocks run out, the most recently
admitted running sequence is preempted: its blocks are freed and it is recomputed later.
"""

from __future__ import annotations

from collections import deque

from inference.engine.block_manager import BlockManager
from inference.engine.sequence import Sequence, Status


def is_decode(seq: Sequence, n: int) -> bool:
    """One new token right after the cached context: served by the decode kernel (a 1-token prompt too)."""
    return n == 1 and seq.num_computed == len(seq) - 1


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 loader=None):
        self.bm = block_manager
        self.loader = loader  # loader(seq): after allocation, fill more of the prefix from the disk tier
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
            self.bm.deallocate(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.deallocate(seq)
        seq.status = Status.WAITING
        seq.logits_parts = []
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, number of new tokens to compute) for this step; decodes first."""
        budget = self.budget
        batch: list[tuple[Sequence, int]] = []
        preempted = False
        for seq in list(self.running):  # admission order: victims come from the unscheduled tail
            if seq not in self.running:  # preempted below
                continue
            n = min(len(seq) - seq.num_computed, budget)
            if n <= 0:
                continue
            while not self.bm.can_append(seq, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            self.bm.append_slots(seq, seq.num_computed + n)
            batch.append((seq, n))
            budget -= n
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.bm.match_prefix(seq)
            if not self.bm.can_allocate(seq, hits):
                if not self.running and not batch:
                    raise RuntimeError("KV cache too small for one sequence")  # guarded at admission
                break
            self.waiting.popleft()
            self.bm.allocate(seq, hits)
            if self.loader is not None:
                self.loader(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(len(seq) - seq.num_computed, budget)
            batch.append((seq, n))
            budget -= n
        return [b for b in batch if is_decode(*b)] + [b for b in batch if not is_decode(*b)]
