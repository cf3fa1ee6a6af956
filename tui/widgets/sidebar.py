"""The session list: search box, sessions newest first; Enter opens one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from tui.widgets.ordered_keys import OrderedInput


class SessionItem(ListItem):
    def __init__(self, session):
        super().__init__(Label(session.title or "New chat", markup=False), classes="session-item")
        self.session_id = session.id
        self.title = session.title


class SessionList(ListView):
    BINDINGS = [
        Binding("delete", "screen.delete_session", "Delete", show=False),
        Binding("r", "screen.rename_session", "Rename", show=False),
    ]


class Sidebar(Vertical):
    """Search box over a list of sessions. Posts `Sidebar.Selected` when the user opens one."""

    class Selected(Message):
        def __init__(self, session_id: str):
            super().__init__()
            self.session_id = session_id

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.store = None
        self.current_id: str | None = None

    def compose(self) -> ComposeResult:
        yield Label("Sessions", id="sidebar-title")
        yield OrderedInput(placeholder="Search (ctrl+f)", id="session-search")
        yield SessionList(id="session-list")

    @property
    def search_text(self) -> str:
        return self.query_one("#session-search", Input).value.strip()

    async def refresh_sessions(self, store=None, current_id: str | None = None) -> None:
        if store is not None:
            self.store = store
        if current_id is not None:
            self.current_id = current_id
        sessions = self.store.list_sessions(search=self.search_text or None)
        lv = self.query_one(SessionList)
        await lv.clear()
        if not lv.is_attached:  # the app is closing (a job that ended as it quit asked for this refresh)
            return
        items = [SessionItem(s) for s in sessions]
        await lv.extend(items)
        lv.index = 0 if items else None
        for i, item in enumerate(items):
            if item.session_id == self.current_id:
                lv.index = i
                item.add_class("-current")

    async def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "session-search":
            event.stop()
            await self.refresh_sessions()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "session-search":
            event.stop()
            self.query_one(SessionList).focus()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, SessionItem):
            self.post_message(self.Selected(event.item.session_id))

    def count(self) -> int:
        return len(self.query(SessionItem))

    def titles(self) -> list[str]:
        return [item.title for item in self.query(SessionItem)]
