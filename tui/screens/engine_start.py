"""Engine start: a progress bar while weights load; on failure, the log tail and what to do."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Label, ProgressBar, Static

from tui.widgets.status_bar import DEMO_LABEL


class EngineStartScreen(ModalScreen):
    """Shown while the engine starts. `set_progress` is called with the launcher's progress. What the user
    types meanwhile goes, in order, to `prompt` (the chat's prompt input, in view below): nothing is lost,
    and an Enter sends the message, which waits for the engine."""

    BINDINGS = [Binding("ctrl+q", "app.quit", "Quit")]

    def __init__(self, model: str, demo: bool = False, prompt=None):
        super().__init__(id="engine-start")
        self.model = model
        self.demo = demo
        self.prompt = prompt  # an OrderedKeys field, or None

    async def _on_key(self, event: events.Key) -> None:
        if self.prompt is None or event.key in self._bindings.key_to_bindings:
            await super()._on_key(event)
            return
        event.stop()
        event.prevent_default()
        await self.prompt.type_in(events.Key(event.key, event.character))

    async def _on_paste(self, event: events.Paste) -> None:
        if self.prompt is not None:
            event.stop()
            await self.prompt._on_paste(event)

    def compose(self) -> ComposeResult:
        with Vertical(id="start-box"):
            yield Label(f"Starting the engine for [b]{self.model}[/b]", id="start-title")
            if self.demo:
                yield Label(DEMO_LABEL, classes="demo-label")
            yield Label("launching the server…", id="start-what")
            yield ProgressBar(total=None, show_eta=False, id="start-progress")
            yield Label("Sessions stay saved; ctrl+q quits.", id="start-hint")

    def set_progress(self, done: int, total: int, what: str) -> None:
        bar = self.query_one(ProgressBar)
        if total and total > 0:
            bar.update(total=total, progress=done)
        self.query_one("#start-what", Label).update(f"{what}  ({done}/{total})" if total else what)


class EngineFailedScreen(Screen):
    """The engine could not start or died: the error, the last log lines, and what to do."""

    BINDINGS = [
        Binding("r", "retry", "Retry"),
        Binding("c", "continue", "Browse sessions"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, error: str, log_tail: list[str], hint: str, log_path: str | None = None):
        super().__init__(id="engine-failed")
        self.error = error
        self.log_tail = log_tail
        self.hint = hint
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        with Vertical(id="failed-box"):
            yield Label("The engine could not start", id="failed-title")
            yield Static(self.error, markup=False, id="failed-error")
            where = f"Last lines of {self.log_path}:" if self.log_path else "Last lines of the engine log:"
            yield Label(where, id="failed-log-title")
            with VerticalScroll(id="failed-log"):
                yield Static("\n".join(self.log_tail) or "(the log is empty)", markup=False)
            yield Static(self.hint, markup=False, id="failed-hint")
            yield Label("r retry · c browse sessions without the engine · q quit", id="failed-keys")
        yield Footer()

    def action_retry(self) -> None:
        self.dismiss("retry")

    def action_continue(self) -> None:
        self.dismiss("continue")
