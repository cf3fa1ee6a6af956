"""The engine's comings and goings as a user meets them: keys typed while it starts are kept (and an Enter
typed meanwhile sends once it is ready); `qwen-chat stop` while it loads says so and r starts it again;
`qwen-chat stop` while the app is idle shows the engine down within seconds, and the next message starts
it again. Real server processes on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inference.client import launcher
from inference.client.stop import stop_main
from sessions import SessionStore
from tests.support.app import SIZE, boxes, chat, idle, make_app, settings_of, type_and_send, wait_for, wait_ready
from tui.app import STATS_EVERY_S
from tui.engine_link import EngineLink, EngineOptions
from tui.screens.engine_start import EngineFailedScreen, EngineStartScreen
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.timeout(180)


def test_keys_typed_while_the_engine_starts_land_in_the_prompt_and_enter_sends_once_ready(tui_server, tmp_path):
    db = tmp_path / "s.db"
    app = make_app(db, tui_server.sock, new=True)
    sid = app.current_session_id
    settings_of(db, sid, max_new_tokens=3)
    gate = threading.Event()  # the engine "loads" until the keys are in
    start = app.link.start

    def slow_start(progress=None):
        gate.wait(60)
        return start(progress)

    app.link.start = slow_start

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, EngineStartScreen), what="the start screen")
            await pilot.press(*"Hello", "backspace", "p", "enter", *"more", "ctrl+j", "x", "backspace")
            await pilot.pause()
            assert isinstance(app.screen, EngineStartScreen)
            gate.set()
            await wait_ready(pilot, app)
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), what="the reply")
            assert [(b.role, b.content) for b in boxes(app)][0] == ("user", "Hellp")
            assert boxes(app)[1].status == "complete"
            assert chat(app).query_one(PromptInput).text == "more\n"

    try:
        asyncio.run(main())
    finally:
        gate.set()
    with SessionStore(db) as store:
        assert [(m.role, m.status) for m in store.messages(sid)] == [("user", "complete"), ("assistant", "complete")]


def test_an_engine_stopped_while_it_starts_says_so_and_r_starts_it_again(tiny_model, runtime, tmp_path):
    app = make_app(tmp_path / "s.db", model=str(tiny_model), new=True)
    start, stopped = app.link.start, []

    def start_and_stop(progress=None):
        def report(done, total, what):
            if not stopped and what != "starting the engine server":  # the server answers: it is loading
                stopped.append(stop_main(["--socket", app.link.socket_path]))
            progress(done, total, what)

        return start(report)

    app.link.start = start_and_stop

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, EngineFailedScreen), timeout=90,
                           what="the failure screen")
            error, hint = app.screen.error, app.screen.hint
            assert "stopped while starting" in error and "qwen-chat stop" in error, error
            assert "exited with code" not in error and "Check the model" not in hint, hint
            assert "press r" in hint.lower(), hint
            app.link.start = start
            await pilot.press("r")
            await wait_ready(pilot, app, timeout=90)

    asyncio.run(main())
    assert stopped == [0]


@pytest.mark.parametrize("code", [0, -15, -9])
def test_a_start_ended_by_a_stop_or_a_signal_is_not_reported_as_a_broken_model(code, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    link = EngineLink(EngineOptions(model="demo"))
    e = launcher.EngineStartError(f"the engine server exited with code {code} while starting", returncode=code)
    failed = link._start_error(e)
    assert "stopped while starting" in str(failed) and "Check the model" not in failed.hint


def test_an_engine_stopped_while_the_app_is_idle_shows_down_and_the_next_message_restarts_it(
        tiny_model, runtime, tmp_path):
    db = tmp_path / "s.db"
    app = make_app(db, model=str(tiny_model), new=True)
    settings_of(db, app.current_session_id, max_new_tokens=3)

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await wait_ready(pilot, app, timeout=90)
            bar = chat(app).query_one(StatusBar)
            assert bar.state == "ready"
            pid = app.link.info["pid"]
            assert stop_main(["--socket", app.link.socket_path]) == 0
            await wait_for(pilot, lambda: app.engine_state == "down", timeout=3 * STATS_EVERY_S + 5,
                           what="the engine marked down")
            assert bar.state == "down"
            await type_and_send(pilot, "Back?")
            await wait_for(pilot, lambda: len(boxes(app)) == 2 and idle(app), timeout=90, what="the reply")
            assert boxes(app)[1].status == "complete" and app.link.info["pid"] != pid
            assert app.engine_state == "ready" and bar.state == "ready"

    asyncio.run(main())
