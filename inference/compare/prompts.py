"""The prompt file of `qwen-chat compare`: .txt (one plain-text prompt per line) or .jsonl (per line
{"prompt": "..."} or {"messages": [{"role", "content"}, ...]})."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from inference.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    id: str  # "<line>-<hash of the content>": a rerun skips it only while the line still holds the same prompt
    line: int
    text: str | None = None  # exactly one of text / messages
    messages: list[dict] | None = None


def _make(line: int, text: str | None = None, messages: list[dict] | None = None) -> Prompt:
    blob = json.dumps([text, messages], ensure_ascii=False, sort_keys=True).encode()
    return Prompt(f"{line}-{hashlib.sha1(blob).hexdigest()[:10]}", line, text, messages)


def _messages(v: object, where: str) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise UserError(f"{where}: \"messages\" must be a non-empty array of {{\"role\", \"content\"}} objects")
    for n, m in enumerate(v):
        if (not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
                or set(m) - {"role", "content"}):
            raise UserError(f"{where}: messages[{n}] must be {{\"role\": one of {', '.join(ROLES)}, "
                            "\"content\": a string}")
    return [{"role": m["role"], "content": m["content"]} for m in v]


def load_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of `path`; blank lines are skipped. Raises UserError naming the file and line."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".txt", ".jsonl"):
        raise UserError(f"--prompts {path}: give a .txt file (one prompt per line) or a .jsonl file "
                        "({\"prompt\": ...} or {\"messages\": [...]} per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --prompts {path}: {e}") from None
    out = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if kind == ".txt":
            out.append(_make(n, text=raw))
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(obj, dict) or ("prompt" in obj) == ("messages" in obj):
            raise UserError(f"{where}: each line must be an object with exactly one of \"prompt\" or \"messages\"")
        if "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise UserError(f"{where}: \"prompt\" must be a non-empty string")
            out.append(_make(n, text=obj["prompt"]))
        else:
            out.append(_make(n, messages=_messages(obj["messages"], where)))
    if not out:
        raise UserError(f"--prompts {path} holds no prompts")
    return out
