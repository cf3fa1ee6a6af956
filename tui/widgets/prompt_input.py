"""The multi-line prompt: Enter sends, ctrl+j / shift+enter / alt+enter insert a new line, Up recalls."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message

from tui.widgets.ordered_keys import OrderedTextArea

NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")


class PromptInput(OrderedTextArea):
    """Enter sends the prompt (and empties the field at once, so keys typed right after it start the next
    one). Up on the first line recalls earlier prompts, Down goes forward again."""

    BINDINGS = [
        Binding(",".join(NEWLINE_KEYS), "newline", "New line", show=False),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str):
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder="Message Qwen…  Enter sends · ctrl+j new line · ↑ earlier prompts · F1 help",
                         **kwargs)
        self.prompts: list[str] = []
        self._recall: int | None = None  # index into history while recalling
        self._draft = ""

    def set_history(self, prompts: list[str]) -> None:
        self.prompts = [p for p in prompts if p.strip()]
        self._recall = None

    def action_newline(self) -> None:
        start, end = self.selection
        self._replace_via_keyboard("\n", start, end)

    async def _on_key(self, event: events.Key) -> None:
        if await self.passed_on(event):
            return
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.remember(text)
                self.clear()
                self.post_message(self.Submitted(self, text))
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self.prompts:
            event.stop()
            event.prevent_default()
            self.recall(-1)
            return
        last_row = self.document.line_count - 1
        if event.key == "down" and self._recall is not None and self.cursor_location[0] == last_row:
            event.stop()
            event.prevent_default()
            self.recall(+1)
            return
        await super()._on_key(event)

    def recall(self, step: int) -> None:
        """Step through earlier prompts (-1 older, +1 newer); past the newest returns to the draft."""
        if self._recall is None:
            if step > 0:
                return
            self._draft = self.text
            index = len(self.prompts) - 1
        else:
            index = self._recall + step
        if index < 0:
            return
        if index >= len(self.prompts):
            self._recall = None
            self.load_text(self._draft)
        else:
            self._recall = index
            self.load_text(self.prompts[index])
        self.move_cursor(self.document.end)

    def give_back(self, text: str) -> None:
        """Put a prompt that could not be sent back in front of whatever was typed since."""
        rest = self.text
        self.load_text(text + ("\n" + rest if rest.strip() else ""))
        self.move_cursor(self.document.end)

    def remember(self, text: str) -> None:
        if text.strip() and (not self.prompts or self.prompts[-1] != text):
            self.prompts.append(text)
        self._recall = None
        self._draft = ""
