"""The compare view's second engine (B): its link, its state, and its start in a daemon thread.

B starts through the same launcher as the main engine (or attaches to a running one); its progress and
its failure go to the compare bar, never to a modal screen: the main engine's column keeps working.
"""

from __future__ import annotations

import asyncio

from textual.message import Message

from inference.model_path import model_id
from tui.engine_link import EngineLink, EngineOptions, StartFailed


def engine_label(info: dict, opts: EngineOptions) -> str:
    """`demo · cpu float32 · w8a16 · tp1` from an engine's health (or the options asked for)."""
    if info:
        name, device, dtype = info.get("model_id") or "?", info.get("device", "?"), info.get("dtype", "?")
        quant, tp = info.get("quant") or "no quant", info.get("tp", 1)
    else:
        name = model_id(opts.model) if not opts.attach else opts.socket
        device, dtype, quant, tp = opts.device, opts.dtype, opts.quant or "no quant", opts.tp
    return f"{name} · {device} {dtype} · {quant} · tp{tp}"


class ComparisonChanged(Message):
    """B's state or progress changed: the compare bar redraws."""


class Comparison:
    """Engine B of the compare view. `state`: "starting", "ready", "failed" (`error` says why) or "down"."""

    def __init__(self, options: EngineOptions, greedy: bool = True, link: EngineLink | None = None):
        self.options = options
        self.greedy = greedy
        self.link = link or EngineLink(options)
        self.state = "starting"
        self.progress = ""
        self.error = ""
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return engine_label(self.link.info, self.options)

    async def ensure(self, screen) -> bool:
        """Start or reconnect B if needed; True when ready. Failure leaves `state` "failed" and `error`."""
        async with self._lock:
            if self.state == "ready" and await self.link.alive():
                return True
            self.state, self.progress, self.error = "starting", "", ""
            screen.post_message(ComparisonChanged())
            try:
                await self._start_in_thread(screen)
            except StartFailed as e:
                self.state, self.error = "failed", str(e).splitlines()[0]
            except Exception as e:  # noqa: BLE001 - whatever it was, the column says so
                self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            else:
                self.state = "ready"
            screen.post_message(ComparisonChanged())
            return self.state == "ready"

    async def _start_in_thread(self, screen) -> dict:
        def progress(n: int, total: int, what: str) -> None:
            self.progress = f"{what} ({n}/{total})" if total else what
            screen.post_message(ComparisonChanged())  # thread-safe

        return await self.link.start_in_thread(progress, name="compare-engine-start")

    def status_text(self) -> str:
        what = {"starting": f"starting… {self.progress}".rstrip(), "ready": "ready", "down": "down",
                "failed": f"failed: {self.error}"}.get(self.state, self.state)
        mode = "greedy" if self.greedy else "chat sampling"
        return f"B: {self.label} · {what} · {mode}"
