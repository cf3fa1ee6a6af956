"""BoolQ as the reference runs it (MindIE atb_models `tests/modeltest`, `full_BoolQ`).

Data: `*.jsonl` files (or one file), one object per line with question, passage, title and a boolean
answer. One forward pass per item; the prediction is "yes" iff the log-softmax of the last token of
" yes" is greater than that of " no" in the logits that predict the first new token.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from inference.errors import UserError

FIELDS = ("question", "passage", "title", "answer")


@dataclass(frozen=True)
class BoolqItem:
    item_id: str  # "<file name>:<line>"
    file: str
    question: str
    passage: str
    title: str
    answer: bool
    source: str  # "path:line"


def _files(data: str | os.PathLike) -> list[Path]:
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise UserError(f"--data {data} not found; give a folder of BoolQ *.jsonl files or one .jsonl file")
    files = sorted(data.glob("*.jsonl"))
    if not files:
        raise UserError(f"--data {data} holds no *.jsonl files; BoolQ lines look like "
                        '{"question": ..., "passage": ..., "title": ..., "answer": true}')
    return files


def read_boolq_jsonl(path: Path, limit: int | None = None) -> list[BoolqItem]:
    items: list[BoolqItem] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in FIELDS if k not in obj]
            if missing:
                raise UserError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; "
                                f"BoolQ lines need {', '.join(FIELDS)}")
            for k in ("question", "passage", "title"):
                if not isinstance(obj[k], str):
                    raise UserError(f"{path}:{lineno}: field {k!r} must be a string, got {obj[k]!r:.40}")
            if not isinstance(obj["answer"], bool):
                raise UserError(f"{path}:{lineno}: answer must be true or false, got {obj['answer']!r:.40}")
            items.append(BoolqItem(
                item_id=f"{path.name}:{lineno}", file=path.name, question=obj["question"],
                passage=obj["passage"], title=obj["title"], answer=obj["answer"], source=f"{path}:{lineno}",
            ))
    return items


def load_boolq(data: str | os.PathLike, limit: int | None = None) -> list[BoolqItem]:
    """Items of every *.jsonl under `data` (sorted by name); `limit` items at most per file."""
    out = []
    for p in _files(data):
        out += read_boolq_jsonl(p, limit)
    return out


def build_prompt(item: BoolqItem) -> str:
    return f"{item.title} -- {item.passage}\nQuestion: {item.question}?\nAnswer:"


def yes_no_ids(tokenizer) -> tuple[int, int]:
    return tokenizer.encode(" yes")[-1], tokenizer.encode(" no")[-1]


def predict(logits, yes_id: int, no_id: int) -> tuple[bool, float, float]:
    """(prediction, log p(" yes"), log p(" no")) from the last-token logits (a 1-D tensor)."""
    import torch

    lp = torch.log_softmax(logits.detach().to(torch.float32), dim=-1)
    lp_yes, lp_no = float(lp[yes_id]), float(lp[no_id])
    return lp_yes > lp_no, lp_yes, lp_no


def summarize(items: list[BoolqItem], records: dict[str, dict]) -> dict:
    per_file: OrderedDict[str, dict] = OrderedDict()
    for it in items:
        if it.item_id not in records:
            continue
        f = per_file.setdefault(it.file, {"file": it.file, "correct": 0, "total": 0})
        f["correct"] += bool(records[it.item_id]["correct"])
        f["total"] += 1
    for f in per_file.values():
        f["accuracy"] = f["correct"] / f["total"]
    c = sum(f["correct"] for f in per_file.values())
    n = sum(f["total"] for f in per_file.values())
    return {"overall": {"correct": c, "total": n, "accuracy": c / n if n else None},
            "files": list(per_file.values())}


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
