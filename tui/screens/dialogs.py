"""Small modal dialogs: a one-line text prompt (rename) and a yes/no question (delete)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, ScreenResultType
from textual.widgets import Button, Label

from tui.widgets.ordered_keys import OrderedInput


class TextPrompt(ModalScreen[str | None]):
    """Ask for one line of text; dismisses with it (stripped) or None on Esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__(classes="dialog")
        self.question = question
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question)
            yield OrderedInput(self.value, id="dialog-input", submit=self.submit)
            yield Label("Enter to save, Esc to cancel", classes="dialog-hint")

    def submit(self, value: str) -> None:
        text = value.strip()
        if not text:
            self.notify("Type something, or press Esc to cancel", severity="warning")
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class FormScreen(ModalScreen[ScreenResultType]):
    """A form: `read()` returns its result or raises ValueError, whose message shows in the form's
    `#settings-error` line; submit (ctrl+s, Enter in a field) dismisses with the result, Esc with None."""

    def read(self) -> ScreenResultType:
        raise NotImplementedError

    def action_submit(self) -> None:
        try:
            result = self.read()
        except ValueError as e:
            self.query_one("#settings-error", Label).update(f"⚠ {e}")
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question: y / Enter on Yes confirm, n / Esc cancel."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__(classes="dialog")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
