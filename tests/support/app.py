"""Helpers for the chat-app tests (this module holds no tests): a real engine server process on the
tiny checkpoint, an app factory, and a poller for pilot tests."""

from __future__ import annotations

import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path

from sessions import SessionStore
from tests.support import server as server_helpers
from tests.support.server import stop_server
from tui.app import ChatApp
from tui.engine_link import EngineOptions
from tui.screens.chat import ChatScreen
from tui.widgets.message import MessageBox
from tui.widgets.message_view import MessageView
from tui.widgets.prompt_input import PromptInput

SERVER_ARGS = ("--num-kv-blocks", "512")  # on top of the server tests' CPU float32 arguments
SIZE = (110, 36)


def start_server(model, sock: Path, log: Path, timeout: float = 90.0) -> subprocess.Popen:
    """`python -m inference serve` on `sock`, waited for until ready; its output goes to `log`."""
    proc = server_helpers.start_server(model, sock, *SERVER_ARGS, log=log)
    try:
        server_helpers.wait_ready(sock, proc, log, timeout)
    except AssertionError:
        stop_server(proc)
        raise
    return proc


def make_app(db: Path, sock: Path | None = None, model: str = "demo", **kw) -> ChatApp:
    opts = EngineOptions(model=model, socket=str(sock) if sock else None, device="cpu", dtype="float32")
    return ChatApp(opts, SessionStore(db), **kw)


def new_chat(db: Path, sock: Path | None = None, model: str = "demo", **settings) -> tuple[ChatApp, str]:
    """An app on a new chat in `db` whose settings are changed by `settings`: (the app, the chat's id)."""
    app = make_app(db, sock, model, new=True)
    settings_of(db, app.current_session_id, **settings)
    return app, app.current_session_id


@asynccontextmanager
async def ready(app: ChatApp, timeout: float = 60.0):
    """The app running under its pilot, once its engine is ready: `async with ready(app) as pilot:`."""
    async with app.run_test(size=SIZE) as pilot:
        await wait_ready(pilot, app, timeout)
        yield pilot


async def wait_for(pilot, cond, timeout: float = 30.0, what: str = "condition"):
    """Let the app run until `cond()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {describe(pilot.app)}")
        await pilot.pause(0.02)


def describe(app) -> str:
    """The app's state, for failure messages."""
    try:
        msgs = [(b.role, b.status, b.content[:40], b.error) for b in app.chat.query_one(MessageView).boxes()]
    except Exception as e:  # noqa: BLE001
        msgs = repr(e)
    return f"screen={app.screen!r} engine={app.engine_state} messages={msgs}"


async def wait_ready(pilot, app: ChatApp, timeout: float = 60.0) -> None:
    await wait_for(pilot, lambda: app.engine_state == "ready" and isinstance(app.screen, ChatScreen), timeout,
                   "the engine to be ready")


def chat(app) -> ChatScreen:
    return app.chat


def boxes(app) -> list[MessageBox]:
    return chat(app).query_one(MessageView).boxes()


def idle(app) -> bool:
    return (not chat(app).streaming and chat(app).reply_box is None
            and all(b.status != "streaming" for b in boxes(app)))


async def type_and_send(pilot, text: str) -> None:
    chat(pilot.app).query_one(PromptInput).focus()
    await pilot.press(*text)
    await pilot.press("enter")


def settings_of(db, sid: str, **changes) -> None:
    with SessionStore(db) as store:
        store.update_session(sid, settings=changes)
