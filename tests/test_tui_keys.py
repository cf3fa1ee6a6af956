"""Keys typed in a burst (a paste through tmux, a fast typist) apply in the order typed: in the prompt
input, across the settings fields, and right after Enter sends a prompt. The keys go in as the terminal
driver delivers a burst: all posted at once, nothing waited for in between."""

from __future__ import annotations

import asyncio
import unicodedata

import pytest
from textual import events
from textual.keys import _character_to_key

from sessions import SessionStore
from tests.support.app import SIZE, boxes, chat, make_app, wait_for
from tui.screens.chat import ChatScreen
from tui.screens.settings import SettingsScreen
from tui.widgets.prompt_input import PromptInput

pytestmark = pytest.mark.timeout(60)


def burst(app, *parts: str) -> None:
    """Send every key at once: a part in <> is a key name (<backspace>, <ctrl+j>), any other part is text."""
    keys: list[str] = []
    for part in parts:
        keys += [part[1:-1]] if part.startswith("<") and part.endswith(">") else list(part)
    for key in keys:
        name = key if len(key) > 1 or key.isalnum() else _character_to_key(key)
        char = key if len(key) == 1 else None
        if char is None:
            try:
                char = unicodedata.lookup(name.upper().replace("_", " "))
            except KeyError:
                char = None
        event = events.Key(name, char)
        event.set_sender(app)
        app._driver.send_message(event)


@pytest.fixture
def app(tmp_path):
    app = make_app(tmp_path / "s.db", new=True, start_engine=False)

    async def no_engine() -> bool:  # a send ends at once in "the engine is not running"
        return False

    app.ensure_engine = no_engine
    return app


def test_editing_keys_in_a_burst_apply_in_order_in_the_prompt(app):
    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            prompt = chat(app).query_one(PromptInput)
            burst(app, "ab", "<backspace>", "c", "<ctrl+j>", "de", "<left>", "<left>", "X", "<end>", "!")
            await wait_for(pilot, lambda: prompt.text.endswith("!"), what="the burst")
            await pilot.pause()
            assert prompt.text == "ac\nXde!"

    asyncio.run(main())


def test_keys_typed_right_after_enter_start_the_next_prompt(app):
    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            prompt = chat(app).query_one(PromptInput)
            burst(app, "first", "<enter>", "second")
            await wait_for(pilot, lambda: boxes(app) and boxes(app)[0].content == "first"
                           and not chat(app).streaming, what="the first message")
            await pilot.pause()
            assert prompt.text == "second"
        with SessionStore(app.store.path) as st:
            assert [m.content for m in st.messages(app.current_session_id)] == ["first"]

    asyncio.run(main())


def test_a_burst_across_the_settings_fields_fills_each_field_in_order(app):
    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings")
            await pilot.pause()
            # system prompt (focused first) -> temperature -> top-p -> top-k -> penalty -> max new tokens
            burst(app, "<ctrl+a>", "<ctrl+k>", "Be brief.", "<tab>", "<backspace>", "0.5", "<tab>", "<tab>",
                  "<backspace>", "7", "<tab>", "<tab>", "<backspace>", "12", "<left>", "<backspace>", "3",
                  "<ctrl+s>")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the save")
        with SessionStore(app.store.path) as st:
            s = st.get_session(app.current_session_id)
        assert s.system_prompt == "Be brief."
        assert (s.settings["temperature"], s.settings["top_k"], s.settings["max_new_tokens"]) == (0.5, 7, 32)

    asyncio.run(main())


def test_keys_typed_behind_a_key_that_opens_a_dialog_go_to_the_dialog(app):
    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.store.update_session(app.current_session_id, title="old")
            burst(app, "<f2>", "<ctrl+u>", "renamed", "<enter>", "next")
            prompt = chat(app).query_one(PromptInput)
            await wait_for(pilot, lambda: prompt.text == "next", what="the burst")
        with SessionStore(app.store.path) as st:
            assert st.get_session(app.current_session_id).title == "renamed"

    asyncio.run(main())
