"""One message of the conversation: a header line and its Markdown body (streamed for replies)."""

from __future__ import annotations

import asyncio

from markdown_it import MarkdownIt
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Label, Markdown, Static
from textual.widgets.markdown import MarkdownFence, MarkdownStream

STATUS_LABELS = {
    "streaming": "… writing",
    "interrupted": "■ interrupted",
    "error": "⚠ error",
    "complete": "",
}


class ChatFence(MarkdownFence):
    """A code block; one without a language is shown as plain text (guessing costs ~30 ms a block)."""

    @classmethod
    def highlight(cls, code: str, language: str, ansi: bool = False, dark: bool = False):
        return super().highlight(code, language or "text", ansi, dark)


class ChatMarkdown(Markdown):
    BLOCKS = {**Markdown.BLOCKS, "fence": ChatFence, "code_block": ChatFence}


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced / indented code blocks of a Markdown text, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown or "")
    return [t.content for t in tokens if t.type in ("fence", "code_block")]


def stats_line(stats: dict | None) -> str:
    """`42 tokens · 215.3 tok/s · TTFT 120 ms · 480 cached` from a reply's stats (empty if none)."""
    if not stats:
        return ""
    parts = []
    if stats.get("completion_tokens") is not None:
        parts.append(f"{int(stats['completion_tokens'])} tokens")
    if stats.get("decode_tok_s"):
        parts.append(f"{stats['decode_tok_s']:.1f} tok/s")
    if stats.get("ttft_ms") is not None:
        parts.append(f"TTFT {stats['ttft_ms']:.0f} ms")
    if stats.get("cached_tokens"):
        parts.append(f"{int(stats['cached_tokens'])} cached")
    return " · ".join(parts)


class MessageBox(Vertical, can_focus=True):
    """A message. Focused: `c` copies it, `1`..`9` copy its code blocks, `f` forks the chat here."""

    BINDINGS = [
        Binding("c", "copy", "Copy message"),
        *[Binding(str(n), f"copy_code({n})", f"Copy code block {n}", show=False) for n in range(1, 10)],
        Binding("f", "fork_here", "Fork here"),
    ]

    class ForkRequested(Message):
        """The user asked to fork the chat at this message."""

        def __init__(self, idx: int):
            super().__init__()
            self.idx = idx

    def __init__(self, role: str, content: str = "", *, idx: int | None = None, message_id: int | None = None,
                 status: str = "complete", stats: dict | None = None, error: str = ""):
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.idx = idx
        self.message_id = message_id
        self.status = status
        self.stats = dict(stats or {})
        self.error = error or str(self.stats.get("error") or "")
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._header_text(), classes="message-header")
        if self.role == "user":
            yield Static(self.content, markup=False, classes="message-body")
        else:
            yield ChatMarkdown(self.content, classes="message-body")
        yield Label(self._footer_text(), classes="message-footer")

    # -- text of header and footer ----------------------------------------------------------------
    def _header_text(self) -> str:
        who = {"user": "You", "assistant": "Qwen", "system": "System"}.get(self.role, self.role)
        label = STATUS_LABELS.get(self.status, self.status)
        return f"{who}  {label}".rstrip()

    def _footer_text(self) -> str:
        if self.status == "error" and self.error:
            return f"error: {self.error}"
        return stats_line(self.stats)

    def _refresh_labels(self) -> None:
        self.set_class(self.status in ("interrupted", "error"), "-marked")
        self.set_class(self.status == "streaming", "-streaming")
        if self.is_mounted:
            self.query_one(".message-header", Label).update(self._header_text())
            footer = self.query_one(".message-footer", Label)
            footer.update(self._footer_text())
            footer.display = bool(self._footer_text())

    def on_mount(self) -> None:
        self._refresh_labels()

    # -- streaming --------------------------------------------------------------------------------
    def start_stream(self) -> None:
        """Mark the reply as being written; its first text starts the Markdown stream (appended to, never
        re-rendered whole)."""
        self.status = "streaming"
        self._refresh_labels()

    async def append(self, text: str) -> None:
        if not text:
            return
        self.content += text
        if self.status != "streaming":
            self.start_stream()
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        await self._stream.write(text)

    async def _stop_stream(self) -> None:
        """Stop the Markdown stream. `MarkdownStream.stop()` awaits its task, which raises CancelledError
        when the task was cancelled before it ever ran; that error is the stream's, not this handler's, and
        let through it would end the screen's message loop (the app would stop responding)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            await stream.stop()
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and getattr(me, "cancelling", lambda: 0)():
                raise  # this handler itself is being cancelled
            await self.query_one(Markdown).update(self.content)  # the text the stream never showed

    async def finish(self, status: str, stats: dict | None = None, error: str = "") -> None:
        await self._stop_stream()
        self.status = status
        self.stats = dict(stats or {})
        self.error = error or str(self.stats.get("error") or "")
        self._refresh_labels()

    # -- actions ----------------------------------------------------------------------------------
    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.notify(f"Copied the message ({len(self.content)} characters)")

    def action_copy_code(self, n: int) -> None:
        blocks = code_blocks(self.content) if self.role != "user" else []
        if not 1 <= n <= len(blocks):
            self.notify(f"This message has {len(blocks)} code block(s)", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[n - 1])
        self.notify(f"Copied code block {n}")

    def action_fork_here(self) -> None:
        if self.idx is None:
            self.notify("This message is not saved yet", severity="warning")
            return
        self.post_message(self.ForkRequested(self.idx))

    def on_click(self, event) -> None:
        """Clicking a code block copies it."""
        node: Widget | None = event.widget
        while node is not None and node is not self:
            if isinstance(node, MarkdownFence):
                self.app.copy_to_clipboard(node.code)
                self.notify("Copied code block")
                event.stop()
                return
            node = node.parent
