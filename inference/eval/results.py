"""Result files of an eval run: atomic CSV/JSON writes and the resumable partial-results log.

The partial log `<out>/<task>_progress.jsonl` holds one JSON line per finished item, keyed by the
item id, after a first line with the run's signature (model, dtype, scoring, data, ...). A rerun
with the same signature skips the items already there; a different signature is refused rather
than mixed in. Final files are written as `<name>.tmp-<pid>` and renamed, so a crash never leaves a
half-written result file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from inference.errors import UserError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def prepare_out_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the results folder {out}: {e}") from e
    if not os.access(out, os.W_OK):
        raise UserError(f"the results folder {out} is not writable; choose another --out")
    return out


class PartialResults:
    """Append-only log of finished items; reloaded on restart so that done items are skipped."""

    def __init__(self, path: str | os.PathLike, signature: dict, restart: bool = False, writer: bool = True):
        self.path = Path(path)
        self.signature = json.loads(json.dumps(signature))  # normalized (tuples -> lists)
        self.records: dict[str, dict] = {}
        self._f = None
        self._last_sync = 0.0
        self._torn_at: int | None = None
        if restart:
            if writer:  # worker ranks of a torchrun job only read
                self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._load()

    @property
    def resumed(self) -> int:
        return len(self.records)

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # the run was killed mid-line: ignore the torn tail (cut off before the next append)
            self._torn_at = data.rfind(b"\n") + 1
            data = data[: self._torn_at]
        lines = data.decode("utf-8", errors="replace").splitlines()
        if not lines:
            return
        hint = f"pass --restart to discard {self.path}, or choose another --out"
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path}:1: not a progress file of qwen-chat eval ({e}); {hint}") from e
        if not isinstance(head, dict) or "signature" not in head:
            raise UserError(f"{self.path}:1: not a progress file of qwen-chat eval; {hint}")
        if head["signature"] != self.signature:
            diff = sorted(k for k in set(head["signature"]) | set(self.signature)
                          if head["signature"].get(k) != self.signature.get(k))
            raise UserError(
                f"{self.path} holds results of a different run (differs in: {', '.join(diff)}); {hint}"
            )
        for lineno, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                item_id = rec["id"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{self.path}:{lineno}: corrupt progress line ({e}); {hint}") from e
            self.records[str(item_id)] = rec

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def add(self, item_id: str, record: dict) -> None:
        rec = {"id": item_id, **record}
        if self._f is None:
            if self._torn_at is not None:
                with open(self.path, "r+b") as f:
                    f.truncate(self._torn_at)
                self._torn_at = None
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            if new:
                self._f.write(json.dumps({"signature": self.signature}, ensure_ascii=False) + "\n")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()  # survives a crash of this process; fsync (power loss) at most every 2 s
        now = time.monotonic()
        if now - self._last_sync > 2.0:
            os.fsync(self._f.fileno())
            self._last_sync = now
        self.records[item_id] = rec

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
