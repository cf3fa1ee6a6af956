"""Sampling on the device: repetition penalty, temperature, top-k, top-p, per-request seeds; log-probabilities."""

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


LOGPROB_ROWS = 256  # rows per log_softmax pass: bounds the float32 copy of a long prompt's logits
TokenLogprob = tuple[float, list[tuple[int, float]]]  # (log p(token), [(id, log p), ...] most likely first)


def token_logprobs(logits: torch.Tensor, targets: list[int], top: int) -> list[TokenLogprob]:
    """Raw model log-probabilities: log_softmax in float32 over the logits the sampler is given, before the
    repetition penalty, temperature, top-k and top-p; row i scores `targets[i]`, plus its `top` best ids."""
    out: list[TokenLogprob] = []
    for lo in range(0, len(targets), LOGPROB_ROWS):
        lp = torch.log_softmax(logits[lo:lo + LOGPROB_ROWS].float(), dim=-1)
        tgt = torch.tensor(targets[lo:lo + LOGPROB_ROWS], device=lp.device, dtype=torch.long)
        chosen = lp.gather(1, tgt[:, None])[:, 0].tolist()
        if top:
            vals, ids = lp.topk(top, dim=-1)
            alts = [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
        else:
            alts = [[] for _ in chosen]
        out += list(zip(chosen, alts))
    return out


def sampled_logprobs(logits: torch.Tensor, rows: list[int], seqs: list[Sequence], tokens: list[int]
                     ) -> dict[int, TokenLogprob]:
    """{i: log-probability of tokens[i] (row rows[i]) and its alternatives} for the seqs asking for logprobs."""
    want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    if not want:
        return {}
    top = max(seqs[i].params.logprobs for i in want)
    got = token_logprobs(logits[[rows[i] for i in want]], [tokens[i] for i in want], top)
    return {i: (lp, alts[:seqs[i].params.logprobs]) for i, (lp, alts) in zip(want, got)}


def record_prompt_logprobs(seq: Sequence, start: int, rows: torch.Tensor) -> None:
    """`rows` are the logits of prompt positions start.. : row j scores the prompt token after position
    start + j (the last prompt row predicts the reply and is left out). Kept in seq.prompt_lps by position,
    so a preempted request's recomputed rows overwrite their entries."""
    n = min(len(rows), seq.num_prompt_tokens - 1 - start)
    if n <= 0:
        return
    if not seq.prompt_lps:
        seq.prompt_lps = [None] * seq.num_prompt_tokens
    targets = seq.token_ids[start + 1:start + 1 + n]
    seq.prompt_lps[start + 1:start + 1 + n] = token_logprobs(rows[:n], targets, seq.params.prompt_logprobs)


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
