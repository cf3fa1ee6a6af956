"""Per-session settings: system prompt and sampling; saved with the session."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, TextArea

from sessions.records import SessionError, validate_settings
from tui.screens.dialogs import FormScreen
from tui.widgets.ordered_keys import OrderedInput, OrderedTextArea

FIELDS = [  # (key, label, parse)
    ("temperature", "Temperature (0 = greedy)", float),
    ("top_p", "Top-p (0-1]", float),
    ("top_k", "Top-k (0 = off)", int),
    ("repetition_penalty", "Repetition penalty", float),
    ("max_new_tokens", "Max new tokens", int),
]


class SettingsScreen(FormScreen[tuple[str, dict] | None]):
    """Edit a session's settings; dismisses with (system_prompt, settings) or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Save"),  # not priority: it runs after the keys typed before it
    ]
    AUTO_FOCUS = "#system-prompt"  # the first field (the default would focus the scrolling container)

    def __init__(self, title: str, system_prompt: str, settings: dict):
        super().__init__(id="settings")
        self.session_title = title
        self.system_prompt = system_prompt
        self.settings = dict(settings)

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-box"):
            yield Label(f"Settings of “{self.session_title}”", id="settings-title", markup=False)
            with VerticalScroll(id="settings-fields"):
                yield Label("System prompt")
                yield OrderedTextArea(self.system_prompt, id="system-prompt", soft_wrap=True, tab_behavior="focus")
                for key, label, _ in FIELDS:
                    with Horizontal(classes="setting-row"):
                        yield Label(label, classes="setting-label")
                        yield OrderedInput(str(self.settings.get(key, "")), id=f"set-{key}", classes="setting-input",
                                           compact=True, submit=lambda _: self.action_submit())
            yield Label("", id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", id="save", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def read(self) -> tuple[str, dict]:
        """The form's values, checked; raises SessionError / ValueError with a message for the user."""
        values = {}
        for key, label, parse in FIELDS:
            raw = self.query_one(f"#set-{key}", Input).value.strip()
            try:
                values[key] = parse(raw)
            except ValueError:
                kind = "a whole number" if parse is int else "a number"
                raise SessionError(f"{label}: {raw!r} is not {kind}") from None
        settings = validate_settings(values, base=self.settings)
        return self.query_one("#system-prompt", TextArea).text, settings

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_submit()
        else:
            self.action_cancel()
