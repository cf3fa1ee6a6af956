"""Text fields that apply keys in the order they were typed, however fast they come.

Textual inserts a typed character in the focused widget's own `_on_key`, but a bound key (backspace,
the arrows, ctrl+j, tab, Enter on an Input) first bubbles up through every parent to the app, which then
runs the binding. Keys typed in a burst (a paste through tmux, a fast typist, a loaded machine) are all
queued at the field at once, so the characters after a bound key were inserted before it ran: "ab",
backspace, "c" gave "ab" ("abc", then the backspace) instead of "ac". (Textual issue 6605.)

`OrderedKeys._on_key` runs the bindings of the focus chain right there, in the field's own queue, exactly
as the app would have (the app's priority bindings, such as ctrl+q, still run first, at the app). When a
key moved the focus (tab, a dialog), the keys queued behind it are passed on to the newly focused widget
instead of landing in this one (for a dialog that just opened, once it has focused its first field).

`type_in` applies a key typed on a screen above the field's own (the engine start screen) as if the field
had the focus: its own bindings, then the text.
"""

from __future__ import annotations

import asyncio

from textual import events
from textual.widgets import Input, TextArea


class OrderedKeys:
    """Mix in before a Textual text widget (`class F(OrderedKeys, Input)`)."""

    _settling = None  # the screen whose first focus a passed-on key waited for
    _typed_in = False  # the key being handled came through `type_in`

    async def type_in(self, event: events.Key) -> None:
        """Handle `event`, typed on another screen, as if this field had the focus (call it in the order typed)."""
        self._typed_in = True
        try:
            await self._on_key(event)
        finally:
            self._typed_in = False

    async def passed_on(self, event: events.Key) -> bool:
        """True when the focus moved on while `event` waited here: it went to the focused widget."""
        app = self.app
        if app.focused is self or self._typed_in:
            return False
        event.stop()
        event.prevent_default()
        if app.focused is None and self._settling is not app.screen:
            self._settling = app.screen  # a dialog just opened: let it focus its first field (once)
            for _ in range(50):
                await asyncio.sleep(0.01)
                if app.focused is not None:
                    break
        target = app.focused or app.screen
        if target is not self:  # as the app forwards a key (marked forwarded: it is not input again)
            target._forward_event(events.Key(event.key, event.character))
        return True

    async def _on_key(self, event: events.Key) -> None:
        if await self.passed_on(event):
            return
        if not self.check_consume_key(event.key, event.character) and await self._run_binding(event.key):
            event.stop()
            event.prevent_default()
            return
        await super()._on_key(event)

    async def _run_binding(self, key: str) -> bool:
        if not self._typed_in:
            return await self.app._check_bindings(key)
        for binding in self._bindings.key_to_bindings.get(key, ()):  # this field's own: the app's ran already
            if await self.app.run_action(binding.action, self):
                return True
        return False


class OrderedInput(OrderedKeys, Input):
    """An `Input` whose keys apply in the order typed. With `submit`, Enter calls `submit(value)` right away
    (a dialog closes before the keys typed after Enter are read) instead of posting `Input.Submitted`."""

    def __init__(self, *args, submit=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._submit = submit

    async def action_submit(self) -> None:
        if self._submit is None:
            await super().action_submit()
        else:
            self._submit(self.value)


class OrderedTextArea(OrderedKeys, TextArea):
    """A `TextArea` whose keys apply in the order typed."""
