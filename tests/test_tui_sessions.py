"""The chat app without an engine, driven by its pilot: sessions (switch, fork, search, rename,
delete), copying, lazy loading of long sessions, the command palette and help, and how fast the
view takes a token stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from sessions import SessionStore
from sessions.records import DEFAULT_SETTINGS
from tests.support.app import SIZE, boxes, chat, make_app, wait_for
from tui.app import DEMO_MAX_NEW_TOKENS
from tui.screens.chat import ChatScreen
from tui.widgets.message_view import PAGE, MessageView
from tui.widgets.sidebar import Sidebar

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "sessions.db"


def test_copy_a_code_block_of_a_focused_message(db):
    store = SessionStore(db)
    s = store.create_session(title="code")
    store.add_message(s.id, "user", "show code")
    store.add_message(s.id, "assistant", "Two blocks:\n\n```python\nprint(1)\n```\n\nand\n\n```\nls -la\n```\n")
    store.close()

    async def main():
        app = make_app(db, session_id=s.id, start_engine=False)
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


def test_switch_fork_search_rename_and_delete_sessions(db):
    store = SessionStore(db)
    a = store.create_session(title="alpha chat")
    store.add_message(a.id, "user", "about alpha")
    store.add_message(a.id, "assistant", "alpha answer")
    b = store.create_session(title="beta chat")
    store.add_message(b.id, "user", "about beta")
    store.close()

    async def main():
        app = make_app(db, start_engine=False)
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


def test_a_1000_message_session_opens_in_under_a_second_and_loads_more_on_scroll_up(db):
    store = SessionStore(db)
    big = store.create_session(title="big")
    for i in range(1000):
        store.add_message(big.id, "user" if i % 2 == 0 else "assistant", f"message **{i}**\n\n```\ncode {i}\n```")
    small = store.create_session(title="small")
    store.close()

    async def main():
        app = make_app(db, session_id=small.id, start_engine=False)
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


def test_new_chat_reuses_an_empty_chat_and_a_demo_chat_has_short_replies(db):
    first = make_app(db, new=True, start_engine=False)  # qwen-chat --new, twice
    sid = first.current_session_id
    first.store.close()
    again = make_app(db, new=True, start_engine=False)
    assert again.current_session_id == sid and len(again.store.list_sessions()) == 1
    assert again.store.get_session(sid).settings["max_new_tokens"] == DEMO_MAX_NEW_TOKENS < 512
    other = make_app(db, model="7b", new=True, start_engine=False)  # another model: its own chat
    assert other.current_session_id != sid
    assert other.store.get_session(other.current_session_id).settings == DEFAULT_SETTINGS
    other.store.close()

    async def main():
        async with again.run_test(size=SIZE) as pilot:
            await pilot.pause()
            sidebar = chat(again).query_one(Sidebar)
            await pilot.press("ctrl+n")  # this chat is empty: it stays the new chat
            await pilot.pause()
            assert again.current_session_id == sid and sidebar.count() == 2
            again.store.add_message(sid, "user", "hello")
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: again.current_session_id != sid, what="a new chat")
            new = again.current_session_id
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert again.current_session_id == new
            await wait_for(pilot, lambda: sidebar.count() == 3, what="the sidebar")

    asyncio.run(main())


def test_command_palette_and_help_list_the_actions(db):
    async def main():
        app = make_app(db, start_engine=False)
        first = app.current_session_id
        app.store.add_message(first, "user", "not empty")  # an empty chat would be reused by "New chat"
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


def test_help_lists_each_key_once_and_scrolls_to_its_last_section_in_a_short_terminal(db):
    async def main():
        app = make_app(db, start_engine=False)
        async with app.run_test(size=(110, 45)) as pilot:
            await pilot.pause()
            await pilot.press("f1")
            await pilot.pause()
            text = "\n".join(str(w.render()) for w in app.screen.query(".help-rows"))
            lines = [" ".join(line.split()) for line in text.splitlines()]
            assert len(lines) == len(set(lines)), lines
            assert [line for line in lines if "Copy code block" in line] == ["1 … 9 Copy code block 1 … 9"]
            box = app.screen.query_one("#help-box")
            assert box.region.bottom <= 45
            await pilot.press("end")
            await pilot.pause()
            last = app.screen.query(".help-rows").last()
            assert box.content_region.contains_region(last.region), (box.content_region, last.region)

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

