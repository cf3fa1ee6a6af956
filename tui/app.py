"""`ChatApp`: the Textual app of qwen-chat. Holds the session store and the engine link."""

from __future__ import annotations

import asyncio
import contextvars

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from inference.model_path import model_id
from sessions import SessionStore
from sessions.records import DEFAULT_SETTINGS
from tui.commands import ChatCommands
from tui.engine_link import EngineLink, EngineOptions, StartFailed
from tui.reply import EngineDown
from tui.screens.chat import ChatScreen
from tui.screens.engine_start import EngineFailedScreen, EngineStartScreen
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_bar import DEMO_LABEL, StatusBar

STATS_EVERY_S = 2.0
# The demo model has random weights: its replies never end early, so each would run to the Qwen default
# of 512 tokens (a minute or two on a CPU). A new demo chat shows the whole pipeline in seconds instead;
# the chat's settings (ctrl+s) change it.
DEMO_MAX_NEW_TOKENS = 64


def new_chat_settings(model: str) -> dict:
    """The settings of a new chat on `model`: the Qwen chat defaults, with short replies on the demo."""
    settings = dict(DEFAULT_SETTINGS)
    if model == "demo":
        settings["max_new_tokens"] = DEMO_MAX_NEW_TOKENS
    return settings


def pick_session(store: SessionStore, model: str, session_id: str | None = None, new: bool = False) -> str:
    """The session to open: `session_id` (a unique prefix is enough), a new one, or the latest one."""
    if session_id:
        return store.resolve_id(session_id)
    if not new:
        latest = store.list_sessions()
        if latest:
            return latest[0].id
    return store.empty_chat(model, new_chat_settings(model))


class ChatApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "qwen-chat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]
    # "starting" -> "ready" | "failed"; "down" after it died; "offline" when the app starts none
    engine_state: reactive[str] = reactive("starting")

    def __init__(self, options: EngineOptions, store: SessionStore, session_id: str | None = None,
                 new: bool = False, link: EngineLink | None = None, start_engine: bool = True):
        super().__init__()
        self.options = options
        self.store = store
        self.link = link or EngineLink(options)
        self.current_session_id = pick_session(store, options.model, session_id, new)
        self.start_engine = start_engine
        if not start_engine:
            self.set_reactive(ChatApp.engine_state, "offline")
        self.last_stats: dict = {}
        self._engine_lock = asyncio.Lock()

    def new_chat(self) -> str:
        """The chat that ctrl+n opens: an empty one on this model is reused."""
        return pick_session(self.store, self.options.model, new=True)

    # -- screens ----------------------------------------------------------------------------------
    async def on_mount(self) -> None:
        self.chat = ChatScreen(self.current_session_id)
        await self.push_screen(self.chat)
        self.update_status()
        if self.start_engine:
            self.run_worker(self.ensure_engine(), group="engine", exclusive=True)
        self.set_interval(STATS_EVERY_S, self.poll_stats)

    def status_bar(self) -> StatusBar | None:
        try:
            return self.chat.query_one(StatusBar)
        except Exception:  # noqa: BLE001 - not composed yet / shutting down
            return None

    def update_status(self, generating: bool | None = None) -> None:
        bar = self.status_bar()
        if bar is None:
            return
        info = dict(self.link.info) or {"model_id": model_id(self.options.model), "device": self.options.device,
                                         "dtype": self.options.dtype, "tp": self.options.tp,
                                         "quant": self.options.quant, "demo": self.options.model == "demo"}
        bar.info = info
        if generating is None:
            generating = self.chat.streaming
        bar.state = "generating" if generating and self.engine_state == "ready" else self.engine_state
        bar.last = self.last_stats
        bar.kv = self.link.stats
        self.title = f"qwen-chat · {DEMO_LABEL}" if info.get("demo") else "qwen-chat"

    def watch_engine_state(self) -> None:
        self.update_status()

    def on_engine_down(self, _: EngineDown) -> None:
        self.engine_state = "down"

    def reply_done(self, stats: dict) -> None:
        if stats:
            self.last_stats = stats
        self.update_status(generating=False)
        self.run_worker(self.poll_stats(), group="stats", exclusive=True)

    async def poll_stats(self) -> None:
        if self.engine_state == "ready":
            gone = await self.link.poll_stats() is None
            if gone and self.engine_state == "ready" and not self._engine_lock.locked() and not self.chat.streaming:
                self.engine_state = "down"  # stopped (`qwen-chat stop`) or died while the app was idle
                self.notify("The engine stopped: your next message starts it again", title="Engine",
                            severity="warning", timeout=8)
            bar = self.status_bar()
            if bar is not None:
                bar.kv = self.link.stats

    # -- engine -----------------------------------------------------------------------------------
    async def ensure_engine(self, restart: bool = False) -> bool:
        """Start or reconnect the engine if needed (start screen, failure screen). True when ready.
        `restart`: a request just failed, so the engine counts as down without asking it."""
        async with self._engine_lock:
            if restart:
                self.engine_state = "down"
            if self.engine_state == "ready":
                if await self.link.alive():
                    return True
                self.engine_state = "down"
            while True:
                screen = EngineStartScreen(self.options.model, demo=self.options.model == "demo",
                                           prompt=self.chat.query_one(PromptInput))
                await self.push_screen(screen)
                self.engine_state = "starting"
                try:
                    await self._start_in_thread(screen)
                except StartFailed as e:
                    screen.dismiss()
                    self.engine_state = "failed"
                    choice = await self.push_screen_wait(
                        EngineFailedScreen(str(e), e.log_tail, e.hint, e.log_path))
                    if choice == "retry":
                        continue
                    return False
                screen.dismiss()
                self.engine_state = "ready"
                return True

    async def _start_in_thread(self, screen: EngineStartScreen) -> dict:
        """Run the blocking `link.start` in a daemon thread (quitting never waits for it)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # the app's context, for widget updates from the thread

        def progress(n: int, total: int, what: str) -> None:
            loop.call_soon_threadsafe(screen.set_progress, n, total, what, context=ctx)

        return await self.link.start_in_thread(progress, name="engine-start")

    async def action_restart_engine(self) -> None:
        self.run_worker(self.ensure_engine(restart=True), group="engine", exclusive=True)
