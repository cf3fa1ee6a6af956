"""The scrolling conversation: loads the last page of a session and earlier pages on scroll-up."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Label

from tui.widgets.compare_pair import ComparePair, ReplyColumn, diff_line
from tui.widgets.message import MessageBox

PAGE = 24  # messages mounted at a time: a 1000-message session opens about as fast as a short one


def box_for(msg, alternatives=None) -> MessageBox | ComparePair:
    """A MessageBox for a `sessions` Message record; a ComparePair (kept reply left) when it has alternatives."""
    if alternatives:
        alt = alternatives[0]
        left = ReplyColumn("left", alt.chosen_engine, msg.content, msg.status, msg.stats, kept=True)
        right = ReplyColumn("right", alt.engine, alt.content, alt.status, alt.stats)
        summary = diff_line(alt.first_diff, alt.agreement, len(msg.token_ids), len(alt.token_ids))
        return ComparePair(msg.idx, msg.id, alt.id, left, right, summary)
    return MessageBox(msg.role, msg.content, idx=msg.idx, message_id=msg.id, status=msg.status,
                      stats=msg.stats)


class MessageView(VerticalScroll):
    """Messages of one session, newest at the bottom; stays pinned to the bottom while a reply streams."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.store = None
        self.session_id: str | None = None
        self.first_loaded = 0  # index of the oldest mounted message
        self._loading = False

    def _more_label(self) -> Label:
        return Label(f"↑ {self.first_loaded} earlier messages: scroll up to load", id="more-messages")

    async def load_session(self, store, session_id: str) -> None:
        """Show the last PAGE messages of `session_id`."""
        self.store, self.session_id = store, session_id
        total = store.count_messages(session_id)
        self.first_loaded = max(0, total - PAGE)
        msgs = store.messages(session_id, offset=self.first_loaded, limit=PAGE)
        alts = store.alternatives(session_id, self.first_loaded)
        with self.app.batch_update():
            await self.remove_children()
            widgets = [box_for(m, alts.get(m.id)) for m in msgs]
            if self.first_loaded:
                widgets.insert(0, self._more_label())
            if not widgets:
                widgets.append(Label("Type a message below and press Enter.", id="empty-hint"))
            await self.mount_all(widgets)
        self.scroll_end(animate=False, immediate=True)
        self.anchor()

    async def load_older(self) -> int:
        """Mount the page before the oldest shown message, keeping the view in place; returns the count."""
        if self._loading or not self.first_loaded or self.store is None:
            return 0
        self._loading = True
        try:
            start = max(0, self.first_loaded - PAGE)
            msgs = self.store.messages(self.session_id, offset=start, limit=self.first_loaded - start)
            alts = self.store.alternatives(self.session_id, start)
            boxes = [box_for(m, alts.get(m.id)) for m in msgs]
            old_height = self.virtual_size.height
            old_y = self.scroll_y
            with self.app.batch_update():
                more = self.query("#more-messages")
                shown = [w for w in self.children if isinstance(w, (MessageBox, ComparePair))]
                if shown:
                    await self.mount_all(boxes, before=shown[0])
                else:
                    await self.mount_all(boxes)
                self.first_loaded = start
                await more.remove()
                if start:
                    await self.mount(self._more_label(), before=boxes[0])
            self.call_after_refresh(self._keep_position, old_height, old_y)
            return len(boxes)
        finally:
            self._loading = False

    def _keep_position(self, old_height: int, old_y: float) -> None:
        self.scroll_to(y=old_y + self.virtual_size.height - old_height, animate=False, immediate=True)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new <= 0 and old > 0 and self.first_loaded:
            self.run_worker(self.load_older(), group="load-older", exclusive=True)

    def on_mouse_scroll_up(self) -> None:
        if self.scroll_y <= 0 and self.first_loaded:
            self.run_worker(self.load_older(), group="load-older", exclusive=True)

    async def add(self, box):
        for hint in self.query("#empty-hint"):
            await hint.remove()
        await self.mount(box)
        self.scroll_end(animate=False)
        return box

    def boxes(self) -> list[MessageBox]:
        return list(self.query(MessageBox))

    def last_box(self, role: str | None = None) -> MessageBox | None:
        for box in reversed(self.boxes()):
            if role is None or box.role == role:
                return box
        return None
