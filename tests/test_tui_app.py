"""The chat app driven by its pilot against a real engine server on the tiny checkpoint: type, send,
see tokens stream, stop, regenerate and copy, settings used and saved, resume after a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference.client import EngineClient
from sessions import SessionStore
from tests.support.app import (
    SIZE,
    boxes,
    chat,
    idle,
    make_app,
    settings_of,
    type_and_send,
    wait_for,
    wait_ready,
)
from tui.app import DEMO_MAX_NEW_TOKENS
from tui.screens.chat import ChatScreen
from tui.screens.settings import SettingsScreen
from tui.widgets.message import MessageBox
from tui.widgets.prompt_input import PromptInput
from tui.widgets.sidebar import Sidebar
from tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tui_server):
    return tui_server


@pytest.fixture
def db(tmp_path):
    return tmp_path / "sessions.db"


def test_send_streams_tokens_into_the_view_and_stores_exact_token_ids(server, db, monkeypatch):
    shown = []  # the reply's text after each streamed piece (recorded as it happens: a fast reply can end
    append = MessageBox.append  # before a polling loop would see it)

    async def recording_append(self, text):
        await append(self, text)
        shown.append(self.content)

    monkeypatch.setattr(MessageBox, "append", recording_append)

    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=48, temperature=0.0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            states = set()  # every state the status bar took while the reply streamed
            app.watch(chat(app).query_one(StatusBar), "state", lambda state: states.add(state), init=False)
            await type_and_send(pilot, "Hello there")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the first reply")
            reply = boxes(app)[1]
            assert "generating" in states
            assert reply.status == "complete"
            partial = [t for t in shown if t and t != reply.content]
            assert partial and all(reply.content.startswith(t) for t in partial), "tokens must stream in"
            assert chat(app).query_one(PromptInput).text == ""
            bar = str(chat(app).query_one(StatusBar).render())
            assert "TTFT " in bar and "tok/s" in bar and "ready" in bar and "TTFT –" not in bar
            # a second turn repeats the first token for token: the engine reuses its KV blocks
            await type_and_send(pilot, "And again")
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and idle(app), what="the second reply")
            await pilot.press("up")
            assert chat(app).query_one(PromptInput).text == "And again"
            await pilot.press("up")
            assert chat(app).query_one(PromptInput).text == "Hello there"
        with SessionStore(db) as store, EngineClient(server.sock) as client:
            msgs = store.messages(sid)
            assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
            assert msgs[0].token_ids == client.tokenize("Hello there")
            assert msgs[1].status == "complete" and msgs[1].content == reply.content
            assert len(msgs[1].token_ids) == msgs[1].stats["completion_tokens"] <= 48
            assert client.tokenize(msgs[1].content)[:3] == msgs[1].token_ids[:3]
            assert msgs[3].stats["cached_tokens"] >= 16  # at least one full block of the first turn
            assert store.get_session(sid).title == "Hello there"

    asyncio.run(main())


def test_a_chat_that_outgrew_the_context_still_gets_a_reply(server, db):
    with EngineClient(server.sock) as client:
        limit = client.health()["max_model_len"]
    app = make_app(db, server.sock, new=True)
    sid = app.current_session_id
    settings_of(db, sid, max_new_tokens=8, temperature=0.0)
    with SessionStore(db) as store:  # about 1.2x the window of earlier turns, as stored token ids
        for t in range(limit // 200 + 2):
            store.add_message(sid, "user", "q", token_ids=[1000 + t] * 100)
            store.add_message(sid, "assistant", "a", token_ids=[2000 + t] * 100)

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Still there?")
            n = 2 * (limit // 200 + 2) + 2
            await wait_for(pilot, lambda: len(boxes(app)) == n and idle(app), what="the reply")
            assert boxes(app)[-1].status == "complete"
            notes = [str(n.message) for n in app._notifications]
            assert any("outgrew the model's context window" in n for n in notes), notes
    asyncio.run(main())
    with SessionStore(db) as store:
        reply = store.messages(sid)[-1]
        assert reply.status == "complete" and reply.stats["dropped_messages"] >= 2
        assert len(store.messages(sid)) == 2 * (limit // 200 + 2) + 2  # nothing was deleted from the chat


def test_escape_stops_generation_and_keeps_the_partial_reply(server, db):
    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=500)
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Tell me a long story")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and len(boxes(app)[1].content) > 5,
                           what="some tokens")
            await pilot.press("escape")
            await wait_for(pilot, lambda: idle(app), what="the stop")
            box = boxes(app)[1]
            assert box.status == "interrupted" and "interrupted" in str(box.query_one(".message-header").render())
        with SessionStore(db) as store:
            last = store.messages(sid)[-1]
            assert last.status == "interrupted" and last.content == box.content
            assert 0 < len(last.token_ids) < 500
        with EngineClient(server.sock) as c:  # the request was cancelled on the server too
            deadline = time.monotonic() + 5
            while c.stats()["running"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.stats()["running"] == 0

    asyncio.run(main())


def test_regenerate_replaces_the_last_reply_and_copy_puts_text_on_the_clipboard(server, db):
    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=4)
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Hi")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
            first = boxes(app)[1]
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and boxes(app)[1] is not first
                           and idle(app), what="the regenerated reply")
            assert not first.is_attached
            await pilot.press("ctrl+o")
            content = boxes(app)[1].content
            assert app.clipboard == content != ""
        with SessionStore(db) as store:
            msgs = store.messages(sid)
            assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].content == content
            assert msgs[1].status == "complete"

    asyncio.run(main())


def test_settings_are_saved_with_the_session_and_used(server, db):
    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings")
            form = app.screen
            form.query_one("#set-max_new_tokens").value = "zero"
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)  # refused, with the reason shown
            assert "not a whole number" in str(form.query_one("#settings-error").render())
            form.query_one("#set-max_new_tokens").value = "3"
            form.query_one("#set-temperature").value = "0"
            form.query_one("#set-top_k").value = "5"
            form.query_one("#system-prompt").load_text("Answer briefly.")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
            await type_and_send(pilot, "Hi")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
        with SessionStore(db) as store:
            s = store.get_session(sid)
            assert s.system_prompt == "Answer briefly."
            assert s.settings["max_new_tokens"] == 3 and s.settings["temperature"] == 0 and s.settings["top_k"] == 5
            assert store.messages(sid)[-1].stats["completion_tokens"] <= 3

    asyncio.run(main())


def test_a_new_demo_chat_replies_in_a_few_tokens_and_the_length_is_a_setting(server, db):
    """The demo's random weights never end a reply early: a new demo chat stops it at DEMO_MAX_NEW_TOKENS."""
    async def main():
        app = make_app(db, server.sock, new=True)  # model "demo", on the tiny checkpoint's server
        sid = app.current_session_id
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Hi")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
            assert 0 < boxes(app)[1].stats["completion_tokens"] <= DEMO_MAX_NEW_TOKENS
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings")
            field = app.screen.query_one("#set-max_new_tokens")
            assert field.value == str(DEMO_MAX_NEW_TOKENS)
            field.value = "2"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
            bar = chat(app).query_one(StatusBar)
            assert "TTFT – " not in str(bar.render())  # the first reply's figures
            shown = []  # the status bar while the next reply is written: not the last reply's figures
            app.watch(bar, "state", lambda state: shown.append((state, str(bar.render()))), init=False)
            await type_and_send(pilot, "Again")
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and idle(app), what="the second reply")
            writing = [text for state, text in shown if state == "generating"]
            assert writing and all("TTFT … · … tok/s" in text for text in writing), shown
        with SessionStore(db) as store:
            assert store.messages(sid)[-1].stats["completion_tokens"] <= 2

    asyncio.run(main())


def test_resume_after_restarting_the_app(server, db):
    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=3)
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Remember me")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
            reply = boxes(app)[1].content
        app.store.close()
        again = make_app(db, server.sock)  # a new app on the same database resumes the latest session
        assert again.current_session_id == sid
        async with again.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert [x.content for x in boxes(again)] == ["Remember me", reply]
            assert chat(again).query_one(Sidebar).titles()[0] == "Remember me"
            await wait_ready(pilot, again)
            await pilot.press("up")
            assert chat(again).query_one(PromptInput).text == "Remember me"
        by_prefix = make_app(db, server.sock, session_id=sid[:6], start_engine=False)
        assert by_prefix.current_session_id == sid

    asyncio.run(main())
