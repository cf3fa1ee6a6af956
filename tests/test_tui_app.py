"""The chat app driven by its pilot against a real engine server on the tiny checkpoint: type, send,
stream, stop, regenerate, copy, settings, sessions (switch, fork, search, rename, delete), resume."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from test_tui_support import SIZE, make_app, start_server, stop_server, wait_for, wait_ready

from inference.client import EngineClient
from sessions import SessionStore
from tui.screens.chat import ChatScreen
from tui.screens.settings import SettingsScreen
from tui.widgets.message import MessageBox
from tui.widgets.message_view import PAGE, MessageView
from tui.widgets.prompt_input import PromptInput
from tui.widgets.sidebar import Sidebar
from tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tui-server")
    sock, log = tmp / "engine.sock", tmp / "engine.log"
    proc = start_server(tiny_model, sock, log)
    try:
        yield SimpleNamespace(sock=sock, model=str(tiny_model), log=log, proc=proc)
    finally:
        assert stop_server(proc) == 0, log.read_text()[-2000:]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "sessions.db"


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


def test_send_streams_tokens_into_the_view_and_stores_exact_token_ids(server, db):
    async def main():
        app = make_app(db, server.sock, new=True)
        sid = app.current_session_id
        settings_of(db, sid, max_new_tokens=48, temperature=0.0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app)
            await type_and_send(pilot, "Hello there")
            shown, states = set(), set()  # what the view showed while the reply streamed
            while len(boxes(app)) < 2 or not idle(app):
                if len(boxes(app)) == 2:
                    shown.add(boxes(app)[1].content)
                states.add(chat(app).query_one(StatusBar).state)
                await pilot.pause(0.01)
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


def test_copy_a_code_block_of_a_focused_message(server, db):
    store = SessionStore(db)
    s = store.create_session(title="code")
    store.add_message(s.id, "user", "show code")
    store.add_message(s.id, "assistant", "Two blocks:\n\n```python\nprint(1)\n```\n\nand\n\n```\nls -la\n```\n")
    store.close()

    async def main():
        app = make_app(db, server.sock, session_id=s.id, start_engine=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            boxes(app)[1].focus()
            await pilot.press("2")
            assert app.clipboard == "ls -la\n"
            await pilot.press("c")
            assert app.clipboard.startswith("Two blocks:")
            await pilot.press("ctrl+g")
            assert app.clipboard == "ls -la\n"

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


def test_switch_fork_search_rename_and_delete_sessions(server, db):
    store = SessionStore(db)
    a = store.create_session(title="alpha chat")
    store.add_message(a.id, "user", "about alpha")
    store.add_message(a.id, "assistant", "alpha answer")
    b = store.create_session(title="beta chat")
    store.add_message(b.id, "user", "about beta")
    store.close()

    async def main():
        app = make_app(db, server.sock, start_engine=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.current_session_id == b.id  # the latest session is resumed
            sidebar = chat(app).query_one(Sidebar)
            assert sidebar.titles() == ["beta chat", "alpha chat"]
            sidebar.query_one("#session-list").focus()
            await pilot.press("down", "enter")
            await wait_for(pilot, lambda: app.current_session_id == a.id, what="the switch")
            assert [x.content for x in boxes(app)] == ["about alpha", "alpha answer"]
            boxes(app)[0].focus()
            await pilot.press("f")  # fork at the first message
            await wait_for(pilot, lambda: app.current_session_id not in (a.id, b.id), what="the fork")
            assert [x.content for x in boxes(app)] == ["about alpha"]
            assert sidebar.titles()[0] == "alpha chat (fork)" and sidebar.count() == 3
            await pilot.press("ctrl+f", *"beta")
            await wait_for(pilot, lambda: sidebar.titles() == ["beta chat"], what="the search")
            await pilot.press("enter", "enter")  # to the list, open the hit
            await wait_for(pilot, lambda: app.current_session_id == b.id, what="the search hit")
            await pilot.press("f2")
            await pilot.press("ctrl+u", *"renamed", "enter")
            sidebar.query_one("#session-search").value = ""
            await wait_for(pilot, lambda: "renamed" in sidebar.titles(), what="the rename")
            await pilot.press("f8", "y")
            await wait_for(pilot, lambda: "renamed" not in sidebar.titles() and app.current_session_id != b.id,
                           what="the delete")
        with SessionStore(db) as st:
            titles = {s.title for s in st.list_sessions()}
            assert titles == {"alpha chat", "alpha chat (fork)"}
            fork = next(s for s in st.list_sessions() if s.title.endswith("(fork)"))
            assert fork.parent_id == a.id and st.count_messages(fork.id) == 1

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


def test_a_1000_message_session_opens_in_under_a_second_and_loads_more_on_scroll_up(server, db):
    store = SessionStore(db)
    big = store.create_session(title="big")
    for i in range(1000):
        store.add_message(big.id, "user" if i % 2 == 0 else "assistant", f"message **{i}**\n\n```\ncode {i}\n```")
    small = store.create_session(title="small")
    store.close()

    async def main():
        app = make_app(db, server.sock, session_id=small.id, start_engine=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            t0 = time.perf_counter()
            await chat(app).open_session(big.id)
            await pilot.pause()
            elapsed = time.perf_counter() - t0
            view = chat(app).query_one(MessageView)
            assert elapsed < 1.0, f"opening took {elapsed:.2f}s"
            assert len(view.boxes()) == PAGE and view.boxes()[-1].content.startswith("message **999**")
            view.scroll_home(animate=False, immediate=True)
            await wait_for(pilot, lambda: len(view.boxes()) == 2 * PAGE, what="the earlier page")
            assert view.boxes()[0].idx == 1000 - 2 * PAGE
            await wait_for(pilot, lambda: view.scroll_y > 0, what="the view to stay in place")

    asyncio.run(main())


def test_command_palette_and_help_list_the_actions(server, db):
    async def main():
        app = make_app(db, server.sock, start_engine=False)
        first = app.current_session_id
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("f1")
            await pilot.pause()
            text = "\n".join(str(w.render()) for w in app.screen.query(".help-rows"))
            for binding in ChatScreen.BINDINGS:
                assert binding.description in text, binding.description
            assert "ctrl+j" in text and "enter" in text
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await pilot.press(*"New chat")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.current_session_id != first, what="the new chat")

    asyncio.run(main())


def test_the_view_keeps_up_with_a_stream_far_above_200_tokens_per_second(db):
    """Worst case for the UI: every token its own message (the reply job batches them ~30 a second)."""
    from textual.widgets import Markdown

    from tui.reply import ReplyDelta, ReplyFinished, ReplyStarted

    words = [f"w{i} " if i % 40 else "\n\n```python\nx = 1\n```\n\n" for i in range(1, 1201)]

    async def main():
        app = make_app(db, start_engine=False, new=True)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen, sid = chat(app), app.current_session_id
            record = app.store.begin_reply(sid)
            t0 = time.perf_counter()
            screen.post_message(ReplyStarted(record, sid))
            for w in words:
                screen.post_message(ReplyDelta(w))
            done = app.store.finish_reply(record.id, "".join(words), [], status="complete")
            screen.post_message(ReplyFinished(done, "complete", {}, "", sid))
            await wait_for(pilot, lambda: boxes(app) and boxes(app)[-1].status == "complete", what="the end")
            elapsed = time.perf_counter() - t0
            box = boxes(app)[-1]
            assert box.content == "".join(words) == box.query_one(Markdown).source
            assert len(words) / elapsed > 200, f"{len(words) / elapsed:.0f} tokens/s"
            assert len(box.query("ChatFence")) == len(words) // 40

    asyncio.run(main())
