"""A compare-view turn: two reply columns side by side, each with its own status (TTFT, tok/s, tokens),
and a line saying where the replies first differ and how many tokens agree. Replies are plain text here
(no Markdown), so the text from the first differing token on can be marked exactly."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, Static

from tui.widgets.message import STATUS_LABELS, stats_line

MARK = "⟫"  # where the two replies part


def diff_line(first_diff: int | None, agreement: float | None, n_a: int, n_b: int, tail_a: str | None = None,
              tail_b: str | None = None) -> str:
    if agreement is None:
        return "not compared: a reply failed"
    longest = max(n_a, n_b)
    agree = f"agreement {agreement:.3f} ({round(agreement * longest)}/{longest} tokens)"
    if first_diff is None:
        return f"identical replies · {agree}"

    def clip(s: str) -> str:
        s = " ".join(s.split())
        return repr(s if len(s) <= 24 else s[:23] + "…")

    if tail_a is None or tail_b is None:
        return f"{MARK} first difference at token {first_diff} · {agree}"
    return f"{MARK} first difference at token {first_diff}: A {clip(tail_a)} · B {clip(tail_b)} · {agree}"


class ReplyColumn(Vertical, can_focus=True):
    """One engine's reply. Focused: `k` keeps it (the chat goes on from it), `c` copies it."""

    BINDINGS = [Binding("k", "keep", "Keep this reply"), Binding("c", "copy", "Copy this reply")]

    class KeepRequested(Message):
        def __init__(self, column: ReplyColumn):
            super().__init__()
            self.column = column

    def __init__(self, side: str, engine: str, content: str = "", status: str = "streaming", stats=None,
                 error: str = "", kept: bool = False):
        super().__init__(classes=f"reply-column side-{side}")
        self.side, self.engine, self.content, self.status = side, engine, content, status
        self.stats, self.error, self.kept = dict(stats or {}), error or str((stats or {}).get("error") or ""), kept
        self.live = ""
        self.mark_at: int | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._header(), classes="message-header", markup=False)
        yield Static(self._body(), classes="message-body")
        yield Label(self._footer(), classes="message-footer", markup=False)

    def _header(self) -> str:
        keep = "✓ kept" if self.kept else f"F{4 if self.side == 'left' else 5} / k keeps"
        state = STATUS_LABELS.get(self.status, self.status)
        return " · ".join(p for p in (self.engine, state, keep) if p)

    def _body(self) -> Text:
        if self.mark_at is None:
            return Text(self.content or ("…" if self.status == "streaming" else ""))
        t = Text(self.content[: self.mark_at])
        t.append(MARK, style="bold reverse yellow")
        t.append(self.content[self.mark_at:], style="yellow")
        return t

    def _footer(self) -> str:
        if self.status == "error" and self.error:
            return f"error: {self.error}"
        return self.live if self.status == "streaming" else stats_line(self.stats)

    def refresh_view(self) -> None:
        self.set_class(self.kept, "-kept")
        self.set_class(self.status in ("interrupted", "error"), "-marked")
        if self.is_mounted:
            self.query_one(".message-header", Label).update(self._header())
            self.query_one(".message-body", Static).update(self._body())
            self.query_one(".message-footer", Label).update(self._footer())

    def on_mount(self) -> None:
        self.refresh_view()

    def append(self, text: str, tokens: int, ttft_ms: float | None, tok_s: float | None) -> None:
        self.content += text
        parts = [f"{tokens} tokens"] + ([f"{tok_s:.1f} tok/s"] if tok_s else []) + (
            [f"TTFT {ttft_ms:.0f} ms"] if ttft_ms is not None else [])
        self.live = " · ".join(parts) + " …"
        self.refresh_view()

    def finish(self, status: str, stats: dict, error: str, content: str | None = None) -> None:
        self.status, self.stats, self.error = status, dict(stats or {}), error
        if content is not None:
            self.content = content
        self.refresh_view()

    def action_keep(self) -> None:
        self.post_message(self.KeepRequested(self))

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.notify(f"Copied the reply ({len(self.content)} characters)")


class ComparePair(Vertical):
    """The pair of message `idx`: left = the kept reply when loaded from the store, A when streamed live;
    `alt_id` is the alternatives row."""

    def __init__(self, idx: int, message_id: int, alt_id: int, left: ReplyColumn, right: ReplyColumn,
                 summary: str = ""):
        super().__init__(classes="compare-pair")
        self.summary = summary
        self.idx, self.message_id, self.alt_id = idx, message_id, alt_id
        self.left, self.right = left, right
        self.first_diff: int | None = None
        self.agreement: float | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="compare-columns"):
            yield self.left
            yield self.right
        yield Static(self.summary, classes="pair-diff", markup=False)

    def column(self, side: str) -> ReplyColumn:
        """`side`: "a" (the main engine) / "b", or "left" / "right"."""
        return self.left if side in ("a", "left") else self.right

    @property
    def streaming(self) -> bool:
        return "streaming" in (self.left.status, self.right.status)

    def show_comparison(self, first_diff, agreement, offsets_left=None, offsets_right=None, n_left=None,
                        n_right=None) -> None:
        """Mark each column's text from token `first_diff` on (`offsets`: the text length before each token)
        and write the pair's line."""
        self.first_diff, self.agreement = first_diff, agreement
        tails = []
        for col, offsets in ((self.left, offsets_left), (self.right, offsets_right)):
            at = None
            if first_diff is not None and agreement is not None and offsets is not None:
                at = offsets[first_diff] if first_diff < len(offsets) else len(col.content)
            col.mark_at = at
            col.refresh_view()
            tails.append(col.content[at:] if at is not None else None)
        text = diff_line(first_diff, agreement, n_left or 0, n_right or 0, *tails)
        self.query_one(".pair-diff", Static).update(text)
