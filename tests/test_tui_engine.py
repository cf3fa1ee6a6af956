"""The app manages its engine: starts it in the background with a progress screen, shows the log and
what to do when it cannot start, and survives the engine dying mid-reply (partial reply kept, the
next message starts it again). Real server processes on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from inference.client import launcher
from inference.client.paths import log_path
from sessions import SessionStore
from tests.support.app import SIZE, make_app, settings_of, wait_for, wait_ready
from tui.screens.chat import ChatScreen
from tui.screens.engine_start import EngineFailedScreen, EngineStartScreen
from tui.widgets.message_view import MessageView
from tui.widgets.prompt_input import PromptInput

pytestmark = pytest.mark.timeout(180)


def boxes(app):
    return app.chat.query_one(MessageView).boxes()


async def send(pilot, text: str) -> None:
    pilot.app.chat.query_one(PromptInput).focus()
    await pilot.press(*text, "enter")


def test_start_with_progress_then_engine_dies_mid_reply_and_the_next_message_restarts_it(
        tiny_model, runtime, tmp_path, monkeypatch):
    progress: list[tuple[int, int, str]] = []
    original = EngineStartScreen.set_progress

    def record(self, done, total, what):
        progress.append((done, total, what))
        original(self, done, total, what)

    monkeypatch.setattr(EngineStartScreen, "set_progress", record)
    db = tmp_path / "s.db"

    async def main():
        app = make_app(db, model=str(tiny_model), new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=400)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, EngineStartScreen), what="the start screen")
            await wait_ready(pilot, app)
            assert progress and progress[0][2] == "starting the engine server"
            pid = app.link.info["pid"]
            await send(pilot, "Keep talking")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and len(boxes(app)[1].content) > 3,
                           what="some tokens")
            os.killpg(pid, signal.SIGKILL)  # the engine dies mid-reply
            await wait_for(pilot, lambda: boxes(app)[1].status == "error", what="the error")
            reply = boxes(app)[1]
            footer = str(reply.query_one(".message-footer").render())
            assert "engine stopped mid-reply" in footer
            await wait_for(pilot, lambda: app.engine_state == "down", what="the engine marked down")
            await wait_for(pilot, lambda: not app.chat.streaming, what="the worker to end")
            with SessionStore(db) as st:
                kept = st.messages(sid)[-1]
            assert kept.status == "error" and kept.content == reply.content != ""
            assert "engine stopped mid-reply" in kept.stats["error"]
            # the next message starts the engine again and gets an answer
            settings_of(db, sid, max_new_tokens=3)
            await send(pilot, "Are you back?")
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and boxes(app)[3].status == "complete",
                           timeout=90, what="a reply from the restarted engine")
            assert app.link.info["pid"] != pid and isinstance(app.screen, ChatScreen)
        with SessionStore(db) as st:
            assert [m.status for m in st.messages(sid)] == ["complete", "error", "complete", "complete"]

    asyncio.run(main())


def test_engine_that_dies_before_the_first_token_leaves_the_app_usable(tiny_model, runtime, tmp_path):
    db = tmp_path / "s.db"

    async def main():
        app = make_app(db, model=str(tiny_model), new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=3)
        tokenize = app.link.tokenize

        async def tokenize_then_kill(text):  # the engine dies between the user's message and the reply
            ids = await tokenize(text)
            os.killpg(app.link.info["pid"], signal.SIGKILL)
            while launcher.probe(app.link.socket_path, timeout=1.0) is not None:
                await asyncio.sleep(0.05)
            app.link.tokenize = tokenize
            return ids

        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            app.link.tokenize = tokenize_then_kill
            await send(pilot, "Hello?")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and boxes(app)[1].status == "error"
                           and not app.chat.streaming, what="the error")
            footer = str(boxes(app)[1].query_one(".message-footer").render())
            assert "engine stopped" in footer and boxes(app)[1].content == ""
            await send(pilot, "Are you back?")  # the screen still answers: this starts the engine again
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and boxes(app)[3].status == "complete",
                           timeout=90, what="a reply from the restarted engine")
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: app._exit, timeout=10, what="ctrl+q to quit")
        with SessionStore(db) as st:
            msgs = st.messages(sid)
        assert [m.status for m in msgs] == ["complete", "error", "complete", "complete"]
        assert "engine stopped" in msgs[1].stats["error"]

    asyncio.run(main())


def test_engine_that_cannot_start_shows_its_log_and_the_message_is_kept(runtime, tmp_path):
    """start fails -> browse sessions -> send (the start fails again, the message is kept) -> q quits cleanly."""
    bad = tmp_path / "not-qwen"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    db = tmp_path / "s.db"

    async def main():
        app = make_app(db, model=str(bad), new=True)
        sid = app.current_session_id
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, EngineFailedScreen), timeout=90,
                           what="the failure screen")
            screen = app.screen
            log = str(screen.query_one("#failed-log Static").render())
            assert "not Qwen v1" in log and str(log_path(app.link.socket_path)) == screen.log_path
            assert "qwen-chat serve --model" in str(screen.query_one("#failed-hint").render())
            await pilot.press("c")  # browse sessions without the engine
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
            assert app.engine_state == "failed"
            await send(pilot, "Still saved?")
            await wait_for(pilot, lambda: isinstance(app.screen, EngineFailedScreen), timeout=90,
                           what="the failure screen again")
            await pilot.press("q")  # quitting from here once crashed (MountError in the sidebar)
            await wait_for(pilot, lambda: app._exit, timeout=10, what="q to quit")
        assert app.return_code == 0 and app._exception is None
        with SessionStore(db) as st:
            msgs = st.messages(sid)
        assert [(m.role, m.content) for m in msgs] == [("user", "Still saved?")]

    asyncio.run(main())
