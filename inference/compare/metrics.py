"""What `qwen-chat compare` measures per prompt and over the run (pure functions of the records)."""

from __future__ import annotations


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first token index where the replies differ (one ending early counts), None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(a: list[int], b: list[int]) -> float:
    """Positions holding the same token / the longer reply's length (1.0 for two empty replies)."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else sum(x == y for x, y in zip(a, b)) / longest


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(records: list[dict]) -> dict:
    """The summary row: over the prompts both engines answered."""
    both = [r for r in records if r["a"].get("error") is None and r["b"].get("error") is None]
    return {
        "prompts": len(records), "compared": len(both), "failed": len(records) - len(both),
        "identical": sum(r["first_diff"] is None for r in both),
        "agreement": mean(r["agreement"] for r in both),
        "a_logprob": mean(r["a_logprob"] for r in both), "b_logprob": mean(r["b_logprob"] for r in both),
        **{f"{s}_{k}": mean(r[s].get(k) for r in records) for s in "ab" for k in ("ttft_ms", "tok_s")},
    }
