"""Logits comparison metrics (reference vs candidate) and the prompt set for `--task logits`.

All metrics are computed in float64 over full-vocabulary logits:
cosine similarity, top-1 agreement, KL(reference || candidate) of the softmax distributions (as the
reference's modeltest computes it: `KLDivLoss(log_target=True, reduction="sum")(cand, ref)`), and the
maximum absolute difference. "last" is the position that predicts the first new token; "all" covers
every prompt position.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from inference.errors import UserError

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: What is 17 multiplied by 23?\nAnswer:",
    "中国的首都是",
    "请用一句话介绍一下长城。",
    "床前明月光，疑是地上霜。举头望明月，",
    "Translate to English: 今天天气很好，我们去公园散步吧。\nEnglish:",
)


def load_prompts(path: str | os.PathLike | None) -> list[str]:
    """Prompts from a .txt file (one per non-empty line) or a .jsonl file ({"prompt": ...} per line)."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts {path} not found; give a .txt file (one prompt per line) or a .jsonl "
                        'file ({"prompt": "..."} per line)')
    prompts = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise UserError(f'{path}:{lineno}: expected {{"prompt": "<text>"}}')
                text = obj["prompt"]
            else:
                text = line.rstrip("\r\n").replace("\\n", "\n")
            if not text:
                raise UserError(f"{path}:{lineno}: empty prompt")
            prompts.append(text)
    if not prompts:
        raise UserError(f"--prompts {path} holds no prompts")
    return prompts


def compare_logits(ref, cand) -> dict:
    """Metrics of one prompt: `ref`, `cand` are [positions, vocab] tensors (the same shape)."""
    import torch

    if ref.shape != cand.shape:
        raise UserError(f"logits shapes differ: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}; "
                        "the two checkpoints must share the vocabulary")
    a, b = ref.to(torch.float64), cand.to(torch.float64)
    # dot / sqrt(|a|^2 |b|^2): exactly 1.0 for identical rows (no per-vector normalization rounding)
    cos = ((a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1)).sqrt().clamp_min(1e-300)).clamp(-1.0, 1.0)
    top1 = a.argmax(-1) == b.argmax(-1)
    lpa, lpb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (lpa.exp() * (lpa - lpb)).sum(-1).clamp_min(0.0)
    absdiff = (a - b).abs().amax(-1)
    return {
        "tokens": int(a.shape[0]),
        "last_cosine": float(cos[-1]),
        "last_top1": bool(top1[-1]),
        "last_kl": float(kl[-1]),
        "last_max_abs_diff": float(absdiff[-1]),
        "all_cosine_mean": float(cos.mean()),
        "all_cosine_min": float(cos.min()),
        "all_top1_agreement": float(top1.to(torch.float64).mean()),
        "all_top1_matches": int(top1.sum()),
        "all_kl_mean": float(kl.mean()),
        "all_kl_max": float(kl.max()),
        "all_max_abs_diff": float(absdiff.max()),
    }


def aggregate(per_prompt: list[dict]) -> dict:
    """Summary over prompts: last-token metrics per prompt, all-position metrics per token."""
    if not per_prompt:
        return {}
    n = len(per_prompt)
    tokens = sum(m["tokens"] for m in per_prompt)
    wmean = lambda key: sum(m[key] * m["tokens"] for m in per_prompt) / tokens
    return {
        "prompts": n,
        "tokens": tokens,
        "last_cosine_mean": sum(m["last_cosine"] for m in per_prompt) / n,
        "last_cosine_min": min(m["last_cosine"] for m in per_prompt),
        "last_top1_agreement": sum(m["last_top1"] for m in per_prompt) / n,
        "last_kl_mean": sum(m["last_kl"] for m in per_prompt) / n,
        "last_kl_max": max(m["last_kl"] for m in per_prompt),
        "last_max_abs_diff": max(m["last_max_abs_diff"] for m in per_prompt),
        "all_cosine_mean": wmean("all_cosine_mean"),
        "all_cosine_min": min(m["all_cosine_min"] for m in per_prompt),
        "all_top1_agreement": sum(m["all_top1_matches"] for m in per_prompt) / tokens,
        "all_kl_mean": wmean("all_kl_mean"),
        "all_kl_max": max(m["all_kl_max"] for m in per_prompt),
        "all_max_abs_diff": max(m["all_max_abs_diff"] for m in per_prompt),
    }


def format_table(summary: dict) -> str:
    """The human-readable table printed at the end of `--task logits`."""
    rows = [
        ("cosine similarity (mean)", summary["last_cosine_mean"], summary["all_cosine_mean"], "{:.6f}"),
        ("cosine similarity (min)", summary["last_cosine_min"], summary["all_cosine_min"], "{:.6f}"),
        ("top-1 agreement", summary["last_top1_agreement"], summary["all_top1_agreement"], "pct"),
        ("KL divergence (mean)", summary["last_kl_mean"], summary["all_kl_mean"], "{:.3e}"),
        ("KL divergence (max)", summary["last_kl_max"], summary["all_kl_max"], "{:.3e}"),
        ("max abs difference", summary["last_max_abs_diff"], summary["all_max_abs_diff"], "{:.4g}"),
    ]
    fmt = lambda f, v: f"{100 * v:.2f}%" if f == "pct" else f.format(v)
    lines = [f"{'metric':<26}{'last token':>14}{'all positions':>16}", "-" * 56]
    lines += [f"{name:<26}{fmt(f, last):>14}{fmt(f, allp):>16}" for name, last, allp, f in rows]
    lines.append(f"({summary['prompts']} prompts, {summary['tokens']} positions)")
    return "\n".join(lines)
