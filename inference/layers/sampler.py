"""Sampling on the device: repetition penalty, temperature, top-k, top-p, per-request seeds; log-probabilities.

A layer: it takes logits, sampling parameters and token lists; the engine passes what each request needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from inference.config import SamplingParams


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


def sampled_logprobs(logits: torch.Tensor, rows: list[int], tops: list[int | None], tokens: list[int]
                     ) -> dict[int, TokenLogprob]:
    """{i: log-probability of tokens[i] (row rows[i]) and its tops[i] best alternatives} where tops[i] is not
    None (the request asked for logprobs)."""
    want = [i for i, t in enumerate(tops) if t is not None]
    if not want:
        return {}
    top = max(tops[i] for i in want)
    got = token_logprobs(logits[[rows[i] for i in want]], [tokens[i] for i in want], top)
    return {i: (lp, alts[:tops[i]]) for i, (lp, alts) in zip(want, got)}


def prompt_logprobs(rows: torch.Tensor, token_ids: list[int], start: int, num_prompt_tokens: int, top: int
                    ) -> list[TokenLogprob]:
    """`rows` are the logits of prompt positions start.. : row j scores the prompt token after position
    start + j (the last prompt row predicts the reply and is left out). Returns the entries of prompt
    positions start + 1, start + 2, ..."""
    n = min(len(rows), num_prompt_tokens - 1 - start)
    if n <= 0:
        return []
    return token_logprobs(rows[:n], token_ids[start + 1:start + 1 + n], top)


class Sampler:
    def __init__(self, device):
        self.device = device
        self.generators: dict[str, torch.Generator] = {}
        self.default = torch.Generator(device=device)
        self.default.seed()

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator:
        if seed is None:
            return self.default
        g = self.generators.get(request_id)
        if g is None:
            g = self.generators[request_id] = torch.Generator(device=self.device).manual_seed(seed)
        return g

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], token_ids: list[list[int]],
                 request_ids: list[str]) -> list[int]:
        """One token per row: row i samples with params[i]; token_ids[i] (the request's tokens so far) feed the
        repetition penalty; request_ids[i] keys the generator of a seeded request."""
        logits = logits.float()
        if all(p.greedy and p.repetition_penalty == 1.0 for p in params):
            return logits.argmax(-1).tolist()
        out = []
        for row, p, ids, rid in zip(logits, params, token_ids, request_ids):
            if p.repetition_penalty != 1.0:
                row = row.clone()
                apply_repetition_penalty(row, ids, p.repetition_penalty)
            if p.greedy:
                out.append(row.argmax())
                continue
            row = filter_top_k_top_p(row / p.temperature, p.top_k, p.top_p)
            probs = row.softmax(-1)
            noise = torch.empty_like(probs).exponential_(generator=self._generator(rid, p.seed))
            out.append((probs / noise).argmax())
        return torch.stack(out).tolist()
