"""Every key binding of the app, grouped by where it works (built from the widgets' BINDINGS)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

PROMPT_KEYS = [
    ("enter", "Send the message"),
    ("ctrl+j", "New line (also shift+enter, alt+enter)"),
    ("up", "On the first line: the previous prompt of this chat"),
    ("down", "While recalling: the next prompt, then your draft"),
    ("tab / shift+tab", "Focus sidebar, messages, input"),
]
MOUSE = [
    ("click a code block", "Copy the code block"),
    ("scroll up at the top", "Load earlier messages"),
]


def key_rows(bindings) -> list[tuple[str, str]]:
    """(keys, description) of bindings that have a description, each once."""
    rows, seen = [], set()
    for b in bindings:
        if not isinstance(b, Binding) or not b.description:
            continue
        keys = " / ".join(k.strip() for k in b.key.split(","))
        if (keys, b.description) not in seen:
            seen.add((keys, b.description))
            rows.append((keys, b.description))
    return rows


def help_sections() -> list[tuple[str, list[tuple[str, str]]]]:
    from tui.screens.chat import ChatScreen
    from tui.screens.settings import SettingsScreen
    from tui.widgets.compare_pair import ReplyColumn
    from tui.widgets.message import MessageBox
    from tui.widgets.sidebar import SessionList

    app_keys = [("ctrl+p", "Command palette: every action by name"), ("ctrl+q", "Quit")]
    return [
        ("Chat", key_rows(ChatScreen.BINDINGS)),
        ("Prompt input", PROMPT_KEYS),
        ("A focused message", key_rows(b for b in MessageBox.BINDINGS if not b.action.startswith("copy_code"))
         + [("1 … 9", "Copy code block 1 … 9")]),
        ("A focused compare column", key_rows(ReplyColumn.BINDINGS)),
        ("Session list", [("enter", "Open the session"), *key_rows(SessionList.BINDINGS)]),
        ("Settings", key_rows(SettingsScreen.BINDINGS)),
        ("App", app_keys),
        ("Mouse", MOUSE),
    ]


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    AUTO_FOCUS = "#help-box"  # the arrows and PgUp / PgDn scroll it where the terminal is short

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Label("qwen-chat keys  (Esc closes · ↑ ↓ scroll)", id="help-title")
            sections = help_sections()
            width = max(len(k) for _, rows in sections for k, _ in rows)
            for title, rows in sections:
                yield Label(title, classes="help-section")
                text = "\n".join(f"  {k.ljust(width)}   {d}" for k, d in rows)
                yield Static(text, markup=False, classes="help-rows")

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(result)
