"""One line at the bottom: model, device, dtype, quantization, tp, engine state, last reply, KV cache."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

DEMO_LABEL = "pipeline demo: random weights"
STATE_STYLES = {"ready": "green", "generating": "cyan", "starting": "yellow", "loading": "yellow",
                "down": "red", "failed": "red", "offline": "dim"}


def kv_text(stats: dict | None) -> str:
    if not stats or not stats.get("kv_blocks_total"):
        return "KV –"
    used, total = int(stats.get("kv_blocks_used", 0)), int(stats["kv_blocks_total"])
    return f"KV {100 * used / total:.0f}% {used}/{total}"


class StatusBar(Static):
    """Reads `info` (engine health), `state`, `last` (stats of the last reply; "…" while a reply is being
    written) and `kv` (engine stats)."""

    info: reactive[dict] = reactive(dict, always_update=True)
    state: reactive[str] = reactive("starting")
    last: reactive[dict] = reactive(dict, always_update=True)
    kv: reactive[dict] = reactive(dict, always_update=True)

    def render(self) -> Text:
        info = self.info or {}
        last = self.last or {}
        t = Text(no_wrap=True, overflow="ellipsis")
        if info.get("demo"):  # the header carries the whole DEMO_LABEL
            t.append(" DEMO ", style="bold black on yellow")
            t.append(" ")
        ttft, rate, cached = last.get("ttft_ms"), last.get("decode_tok_s"), last.get("cached_tokens")
        if self.state == "generating":  # the last reply's figures are not this one's: they come at its end
            ttft = rate = cached = None
            none = "…"
        else:
            none = "–"
        fields = [
            (str(info.get("model_id") or info.get("model") or "no model"), "bold"),
            (f"{info.get('device', '?')} {info.get('dtype', '?')}", ""),
            (info.get("quant") or "no quant", ""),
            (f"tp{info.get('tp', 1)}", ""),
            (self.state, STATE_STYLES.get(self.state, "")),
            ("TTFT " + (f"{ttft:.0f} ms" if ttft is not None else none), ""),
            (f"{rate:.1f} tok/s" if rate else f"{none} tok/s", ""),
            (kv_text(self.kv), ""),
            (f"cached {int(cached)}" if cached is not None else f"cached {none}", ""),
        ]
        for i, (text, style) in enumerate(fields):
            if i:
                t.append(" · ", style="dim")
            t.append(text, style=style)
        return t
