"""Command palette provider: every chat action by name (ctrl+p)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

ACTIONS = [  # (title, help, action on the chat screen)
    ("New chat", "Start a new session", "new_session"),
    ("Stop reply", "Stop the generation; the partial reply is kept", "stop"),
    ("Regenerate reply", "Write the last reply again", "regenerate"),
    ("Copy last reply", "Copy the focused message or the last reply to the clipboard", "copy_reply"),
    ("Copy last code block", "Copy the last code block of the chat", "copy_code"),
    ("Session settings", "System prompt, temperature, top-p, top-k, repetition penalty, max tokens",
     "settings"),
    ("Fork chat", "Copy this chat into a new session", "fork"),
    ("Rename chat", "Change the title of this session", "rename_session"),
    ("Delete chat", "Delete this session and its messages", "delete_session"),
    ("Search chats", "Filter the session list by title or text", "search"),
    ("Toggle sidebar", "Show or hide the session list", "toggle_sidebar"),
    ("Compare with another engine", "Each new message goes to a second engine too, side by side (F3)",
     "compare"),
    ("Stop comparing", "Messages go to the main engine only again", "compare_off"),
    ("Keep left reply", "The chat goes on from the left reply of the last comparison (F4)", "keep('left')"),
    ("Keep right reply", "The chat goes on from the right reply of the last comparison (F5)", "keep('right')"),
    ("Restart engine", "Reconnect to the engine, or start it again", "app.restart_engine"),
    ("Help: keys", "Every key binding", "help"),
]


class ChatCommands(Provider):
    """Lists ACTIONS; runs them on the chat screen."""

    async def _run(self, action: str) -> None:
        from tui.screens.chat import ChatScreen

        if action.startswith("app."):
            await self.app.run_action(action[4:])
            return
        for screen in self.app.screen_stack:
            if isinstance(screen, ChatScreen):
                await self.app.run_action(action, screen)
                return

    async def discover(self) -> Hits:
        for title, help_text, action in ACTIONS:
            yield DiscoveryHit(title, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in ACTIONS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, action), help=help_text)
