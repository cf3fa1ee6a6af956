"""A reply that ends in an error leaves the app usable: a real engine server refuses a request before any
text arrives (a prompt longer than its context window) or dies mid-reply; the reason is shown in the
reply box and saved with the reply; the next message gets an answer and ctrl+q quits."""

from __future__ import annotations

import asyncio

import pytest

from inference.client import EngineClient
from sessions import SessionStore
from sessions.cli import main as sessions_main
from tests.support.app import SIZE, boxes, chat, idle, make_app, new_chat, ready, type_and_send, wait_for
from tui.widgets.prompt_input import PromptInput

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tui_server):
    return tui_server


def test_a_refused_request_shows_and_saves_its_reason_and_the_app_stays_usable(server, tmp_path, capsys):
    db = tmp_path / "s.db"
    with EngineClient(server.sock) as client:
        limit = client.health()["max_model_len"]
    app, sid = new_chat(db, server.sock, max_new_tokens=4, temperature=0.0)
    too_long = " ".join(f"word{i}" for i in range(limit))  # more tokens than the engine holds

    async def main():
        async with ready(app) as pilot:
            prompt = chat(app).query_one(PromptInput)
            prompt.focus()
            prompt.load_text(too_long)
            await pilot.press("enter")  # the server refuses it before any token
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the refusal")
            reply = boxes(app)[1]
            footer = str(reply.query_one(".message-footer").render())
            assert reply.status == "error" and "shorten it" in footer, footer
            # the screen still handles messages: another message gets a reply
            await type_and_send(pilot, "Hi")
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and idle(app), what="the next reply")
            assert boxes(app)[3].status == "complete" and boxes(app)[3].content
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: app._exit, timeout=10, what="ctrl+q to quit")

    asyncio.run(asyncio.wait_for(main(), 90))
    with SessionStore(db) as store:
        msgs = store.messages(sid)
    assert [(m.role, m.status) for m in msgs] == [("user", "complete"), ("assistant", "error"),
                                                  ("user", "complete"), ("assistant", "complete")]
    assert "shorten it" in msgs[1].stats["error"]
    assert sessions_main(["--db", str(db), "show", sid]) == 0
    shown = capsys.readouterr().out
    assert "(error)" in shown and "shorten it" in shown

    async def reopen():  # the reason is back with the chat
        again = make_app(db, server.sock, session_id=sid, start_engine=False)
        async with again.run_test(size=SIZE) as pilot:
            await pilot.pause()
            footer = str(boxes(again)[1].query_one(".message-footer").render())
            assert boxes(again)[1].status == "error" and "shorten it" in footer, footer

    asyncio.run(reopen())


def test_an_unexpected_failure_in_the_reply_job_is_an_error_reply_not_a_complete_one(server, tmp_path, monkeypatch):
    import tui.reply

    def broken(done_event):
        raise KeyError("usage")

    monkeypatch.setattr(tui.reply, "usage_stats", broken)  # a bug met when the reply ends
    db = tmp_path / "s.db"
    app, sid = new_chat(db, server.sock, max_new_tokens=3)

    async def main():
        async with ready(app) as pilot:
            await type_and_send(pilot, "Hi")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
            footer = str(boxes(app)[1].query_one(".message-footer").render())
            assert boxes(app)[1].status == "error" and "KeyError" in footer, footer
            monkeypatch.undo()
            await type_and_send(pilot, "Again")
            await wait_for(pilot, lambda: len(boxes(app)) == 4 and idle(app), what="the next reply")
            assert boxes(app)[3].status == "complete"

    asyncio.run(main())
    with SessionStore(db) as store:
        assert [m.status for m in store.messages(sid)] == ["complete", "error", "complete", "complete"]
