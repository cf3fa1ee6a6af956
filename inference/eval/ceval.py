"""C-Eval 5-shot as the reference runs it (MindIE atb_models `tests/modeltest`, `full_CEval`).

Layout (official ceval-exam): `subject_mapping.json` ({subject: [English name, Chinese name,
category]}), `dev/<subject>_dev.csv` and `val/<subject>_val.csv` with the header
`id,question,A,B,C,D,answer[,explanation]`. Shots are the first rows of dev; questions come from val.

Subject text in the prompt: the reference formats the subject *key* the MMLU way, each
underscore-separated word prefixed by a space (`" computer network"`), so its header reads
"...about  computer network." with two spaces. We keep that byte for byte so that accuracies are
comparable with the reference's.
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from inference.errors import UserError

CHOICES = ("A", "B", "C", "D")
REQUIRED_COLUMNS = ("id", "question", "A", "B", "C", "D", "answer")
HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"


@dataclass(frozen=True)
class CevalItem:
    item_id: str  # "<subject>/<id>"
    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str
    source: str  # "file:line"


@dataclass
class CevalSubject:
    key: str
    english: str
    chinese: str
    category: str
    shots: list[CevalItem] = field(default_factory=list)
    items: list[CevalItem] = field(default_factory=list)


# -- loading ---------------------------------------------------------------------------------------------
def _key_line(text: str, key: str) -> int:
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


def load_subject_mapping(path: str | os.PathLike) -> OrderedDict[str, tuple[str, str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: the C-Eval folder needs subject_mapping.json (from the official "
                        "ceval repository) beside dev/ and val/")
    text = path.read_text(encoding="utf-8-sig")
    try:
        raw = json.loads(text, object_pairs_hook=OrderedDict)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}:1: expected an object {{subject: [English name, Chinese name, category]}}")
    out: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
    for key, val in raw.items():
        if not (isinstance(val, list) and len(val) >= 3 and all(isinstance(v, str) for v in val[:3])):
            raise UserError(f"{path}:{_key_line(text, key)}: subject {key!r} must map to "
                            "[English name, Chinese name, category]")
        out[key] = (val[0], val[1], val[2])
    return out


def read_ceval_csv(path: str | os.PathLike, subject: str) -> list[CevalItem]:
    """Rows of one C-Eval CSV; every problem is reported as `file:line: ...`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: C-Eval subject {subject!r} needs it (official layout: "
                        "dev/<subject>_dev.csv and val/<subject>_val.csv)")
    items: list[CevalItem] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}:1: empty file; expected the header "
                            f"{','.join(REQUIRED_COLUMNS)}") from None
        except csv.Error as e:
            raise UserError(f"{path}:1: not valid CSV ({e})") from e
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            note = " (the test split has no answers: use val)" if missing == ["answer"] else ""
            raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}{note}; expected the header "
                            f"{','.join(REQUIRED_COLUMNS)}[,explanation]")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{path}:{line}: not valid CSV ({e})") from e
            start, line = line, reader.line_num + 1
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{start}: {len(row)} fields, the header has {len(header)} "
                                "(unquoted comma or newline?)")
            answer = row[col["answer"]].strip()
            if answer not in CHOICES:
                raise UserError(f"{path}:{start}: answer {answer!r} is not one of A, B, C, D")
            rid = row[col["id"]].strip()
            if not rid:
                raise UserError(f"{path}:{start}: empty id")
            if rid in seen:
                raise UserError(f"{path}:{start}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = start
            items.append(CevalItem(
                item_id=f"{subject}/{rid}", subject=subject, question=row[col["question"]],
                options=tuple(row[col[c]] for c in CHOICES), answer=answer, source=f"{path}:{start}",
            ))
    return items


def load_ceval(data_dir: str | os.PathLike, subjects: list[str] | None = None, shots: int = 5,
               limit: int | None = None) -> list[CevalSubject]:
    """Subjects in subject_mapping.json order, each with its shots and (at most `limit`) val items."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder; give the C-Eval folder "
                        "(subject_mapping.json, dev/, val/)")
    mapping = load_subject_mapping(root / "subject_mapping.json")
    val_dir = root / "val"
    if val_dir.is_dir():
        for p in sorted(val_dir.glob("*_val.csv")):
            key = p.name[: -len("_val.csv")]
            if key not in mapping:
                raise UserError(f"{p}: unknown subject {key!r}, not in {root / 'subject_mapping.json'}; "
                                "add it there or remove the file")
    keys = list(mapping)
    if subjects:
        unknown = [s for s in subjects if s not in mapping]
        if unknown:
            raise UserError(f"--subjects: unknown subject(s) {', '.join(unknown)}; "
                            f"{root / 'subject_mapping.json'} lists {', '.join(keys[:6])}, ...")
        keys = [k for k in keys if k in set(subjects)]
    out = []
    for key in keys:
        english, chinese, category = mapping[key]
        subj = CevalSubject(key, english, chinese, category)
        if shots:
            dev = read_ceval_csv(root / "dev" / f"{key}_dev.csv", key)
            if len(dev) < shots:
                raise UserError(f"{root / 'dev' / f'{key}_dev.csv'}: {len(dev)} rows, {shots} shots need "
                                f"{shots}; pass --shots {len(dev)} or fix the file")
            subj.shots = dev[:shots]
        val = read_ceval_csv(val_dir / f"{key}_val.csv", key)
        subj.items = val[:limit] if limit is not None else val
        out.append(subj)
    return out


# -- prompt ----------------------------------------------------------------------------------------------
def format_subject(key: str) -> str:
    return "".join(" " + word for word in key.split("_"))


def format_example(item: CevalItem, include_answer: bool) -> str:
    text = item.question + "".join(f"\n{c}. {o}" for c, o in zip(CHOICES, item.options)) + "\nAnswer:"
    return text + f" {item.answer}\n\n" if include_answer else text


def build_prompt(subject: CevalSubject, item: CevalItem) -> str:
    head = HEADER.format(format_subject(subject.key))
    return head + "".join(format_example(s, True) for s in subject.shots) + format_example(item, False)


# -- scoring ---------------------------------------------------------------------------------------------
def parse_generation(text: str) -> str:
    """The reference's prediction: the first character after stripping leading whitespace ('' if none)."""
    s = text.lstrip()
    return s[0] if s else ""


def choice_token_ids(tokenizer) -> dict[str, list[int]]:
    """Per letter, the (last) token of " X" and of "X": after "Answer:" the model writes " X"."""
    out = {}
    for c in CHOICES:
        ids = {tokenizer.encode(" " + c)[-1], tokenizer.encode(c)[-1]}
        out[c] = sorted(ids)
    return out


def predict_from_logits(logits, choice_ids: dict[str, list[int]]) -> tuple[str, dict[str, float]]:
    """Argmax over the letters, each scored by its best variant (" X" or "X") in the last-token logits."""
    scores = {c: max(float(logits[i]) for i in ids) for c, ids in choice_ids.items()}
    best = max(CHOICES, key=lambda c: (scores[c], -CHOICES.index(c)))
    return best, scores


def summarize(subjects: list[CevalSubject], records: dict[str, dict]) -> dict:
    """Per-subject, per-category and overall accuracy over the items present in `records`."""
    per_subject, per_cat = [], OrderedDict()
    total_c = total_n = 0
    for s in subjects:
        recs = [records[i.item_id] for i in s.items if i.item_id in records]
        c, n = sum(bool(r["correct"]) for r in recs), len(recs)
        per_subject.append({"subject": s.key, "name": s.english, "category": s.category, "correct": c,
                            "total": n, "accuracy": c / n if n else None})
        cat = per_cat.setdefault(s.category, {"category": s.category, "correct": 0, "total": 0})
        cat["correct"] += c
        cat["total"] += n
        total_c += c
        total_n += n
    for cat in per_cat.values():
        cat["accuracy"] = cat["correct"] / cat["total"] if cat["total"] else None
    overall = {"correct": total_c, "total": total_n, "accuracy": total_c / total_n if total_n else None}
    return {"overall": overall, "categories": list(per_cat.values()), "subjects": per_subject}
