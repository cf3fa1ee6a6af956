"""A small progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise."""

from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    def __init__(self, total: int, desc: str, stream=None, enabled: bool = True, width: int = 28):
        self.total, self.desc, self.width = max(int(total), 0), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.n = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.extra = ""
        if self.enabled:
            self._draw(force=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        frac = self.n / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        extra = f" {self.extra}" if self.extra else ""
        return (f"{self.desc} [{bar}] {self.n}/{self.total} {frac:4.0%} "
                f"{rate:.2f} it/s {_fmt_time(elapsed)}<{_fmt_time(eta)}{extra}")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            if force or now - self._last_draw >= 0.1:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
            return
        decile = int(10 * self.n / self.total) if self.total else 10
        if force or decile != self._last_decile:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_decile = decile

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.n += n
        if extra is not None:
            self.extra = extra
        if self.enabled:
            self._draw(force=self.n >= self.total)

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def print_load_progress(stream=None):
    """A `progress(done, total, what)` callback for weight loading."""
    stream = stream if stream is not None else sys.stderr

    def cb(done: int, total: int, what: str = "") -> None:
        stream.write(f"loading weights {done}/{total} {what}\n")
        stream.flush()

    return cb
