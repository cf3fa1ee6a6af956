"""Sampling on the device: repetition penalty, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

import torch

from inference.engine.sequence import Sequence


def apply_repetition_penalty(logits: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    """In place, as transformers does: seen tokens' logits divided by p if positive, else times p."""
    idx = torch.tensor(sorted(set(token_ids)), device=logits.device, dtype=torch.long)
    seen = logits.index_select(0, idx)
    logits.index_copy_(0, idx, torch.where(seen > 0, seen / penalty, seen * penalty))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


class Sampler:
    def __init__(self, device):
        self.device = device
        self.generators: dict[str, torch.Generator] = {}
        self.default = torch.Generator(device=device)
        self.default.seed()

    def _generator(self, seq: Sequence) -> torch.Generator:
        if seq.params.seed is None:
            return self.default
        g = self.generators.get(seq.request_id)
        if g is None:
            g = self.generators[seq.request_id] = torch.Generator(device=self.device).manual_seed(seq.params.seed)
        return g

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        logits = logits.float()
        if all(s.params.greedy and s.params.repetition_penalty == 1.0 for s in seqs):
            return logits.argmax(-1).tolist()
        out = []
        for row, seq in zip(logits, seqs):
            p = seq.params
            if p.repetition_penalty != 1.0:
                row = row.clone()
                apply_repetition_penalty(row, seq.token_ids, p.repetition_penalty)
            if p.greedy:
                out.append(row.argmax())
                continue
            row = filter_top_k_top_p(row / p.temperature, p.top_k, p.top_p)
            probs = row.softmax(-1)
            noise = torch.empty_like(probs).exponential_(generator=self._generator(seq))
            out.append((probs / noise).argmax())
        return torch.stack(out).tolist()
