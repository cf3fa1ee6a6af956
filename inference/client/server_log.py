"""Reading a background server's log: the last lines of this start, and the reason a start failed."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

START_MARK = "--- "  # launcher.spawn_server's line before each start: "--- <time> starting: <command>"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b[^\s]*: \S")


def read_log_tail(path: str | os.PathLike, n: int = 20, this_run: bool = False) -> list[str]:
    """The last `n` lines of a log file ([] when it does not exist). With `this_run`, only the lines
    after the last start marker that `launcher.spawn_server` writes: nothing from earlier runs."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256 * 1024))
            lines = [ln.decode("utf-8", "replace").rstrip("\r\n") for ln in f]
    except OSError:
        return []
    if this_run:
        starts = [i for i, ln in enumerate(lines) if ln.startswith(START_MARK) and " starting: " in ln]
        lines = lines[starts[-1] + 1:] if starts else lines
    return lines[-n:] if n > 0 else []


def error_line(lines: Sequence[str]) -> str | None:
    """A failed start's own reason in its log lines: the last `error: ...` line (what the CLI prints for
    bad input), else the last line of a traceback (`SomeError: ...`), else None."""
    for line in reversed(lines):
        if line.startswith(("error: ", "error (rank")):
            return line.strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line.strip()
    return None
