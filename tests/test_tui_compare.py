"""The app's compare view, driven by its pilot against real engine servers on the tiny checkpoint: A (the
app's engine) and B (the same checkpoint quantized W8A16 on the fly, or A itself) stream side by side; the
divergence mark sits where two direct greedy runs part; keeping a reply continues the chat from it; an
engine stopped mid-reply leaves the other column working; export carries the pair."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inference.client import EngineClient, launcher
from inference.client.stop import stop_server
from sessions import SessionStore
from sessions.prompt import build_messages
from tests.support.app import chat, new_chat, ready, type_and_send, wait_for
from tui.screens.compare_pick import ComparePickScreen
from tui.widgets.compare_pair import MARK, ComparePair, ReplyColumn
from tui.widgets.message_view import MessageView
from tui.widgets.prompt_input import PromptInput

pytestmark = pytest.mark.timeout(240)
TOKENS = 40


@pytest.fixture(scope="module")
def engine_b(tiny_model, tmp_path_factory):
    """B: tiny_model quantized W8A16 on the fly, on its launcher socket in a private runtime folder."""
    run = tmp_path_factory.mktemp("run-b")
    run.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(run))
        mp.setenv("OMP_NUM_THREADS", "1")
        sock = launcher.ensure_server(str(tiny_model), dtype="float32", device="cpu", quant="w8a16",
                                      extra_args=["--num-kv-blocks", "256"])
    try:
        yield run, sock
    finally:
        stop_server(sock, timeout=20)


def pairs(app) -> list[ComparePair]:
    return list(chat(app).query_one(MessageView).query(ComparePair))


def pair_done(app, n: int) -> bool:
    return len(pairs(app)) == n and not chat(app).streaming and len(chat(app).side_done) == 2


async def open_compare(pilot, app, **fields) -> None:
    await pilot.press("f3")
    await wait_for(pilot, lambda: isinstance(app.screen, ComparePickScreen), what="the compare dialog")
    for key, value in fields.items():
        app.screen.query_one(f"#cmp-{key}").value = value
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: chat(app).comparison is not None, what="the comparison")
    await wait_for(pilot, lambda: chat(app).comparison.state == "ready", timeout=120, what="engine B ready")


def greedy_ids(sock, messages: list[dict], repetition_penalty: float) -> list[int]:
    """A greedy reply straight from an engine, outside the app."""
    ids = []
    with EngineClient(sock) as c:
        for ev in c.generate(messages=messages, max_new_tokens=TOKENS, temperature=0, top_p=1.0, top_k=0,
                             repetition_penalty=repetition_penalty):
            ids += ev.get("token_ids") or [] if ev.get("event") == "token" else []
    return ids


def first_index_where_they_part(a: list[int], b: list[int]) -> int | None:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return None if n == len(a) == len(b) else n


def record_appends(monkeypatch) -> dict:
    shown = {"left": [], "right": []}
    append = ReplyColumn.append

    def recording(self, text, *args):
        append(self, text, *args)
        shown[self.side].append(self.content)

    monkeypatch.setattr(ReplyColumn, "append", recording)
    return shown


def test_a_against_w8a16_marks_the_first_difference_and_keeping_b_continues_from_it(
        tui_server, engine_b, tiny_model, tmp_path, monkeypatch):
    run, sock_b = engine_b
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))  # B is found through the launcher, as the app would
    shown = record_appends(monkeypatch)
    db = tmp_path / "s.db"
    # temperature stays 1.0: the view is greedy by default
    app, sid = new_chat(db, tui_server.sock, max_new_tokens=TOKENS)

    expected = ids_a = None

    async def main():
        nonlocal expected, ids_a
        async with ready(app) as pilot:
            await open_compare(pilot, app, model=str(tiny_model), quant="w8a16", dtype="float32", device="cpu")
            assert chat(app).comparison.link.socket_path == str(sock_b)
            await type_and_send(pilot, "The capital of France is")
            await wait_for(pilot, lambda: pair_done(app, 1), timeout=90, what="the pair")
            pair = pairs(app)[0]
            assert pair.left.status == pair.right.status == "complete"
            for side in ("left", "right"):  # both columns streamed: text grew in pieces
                col = pair.column(side)
                assert len(shown[side]) > 1 and all(col.content.startswith(t) for t in shown[side])
            with SessionStore(db) as store:
                session, msgs = store.get_session(sid), store.messages(sid)
            prompt = build_messages(session, msgs[:1])
            ids_a = greedy_ids(tui_server.sock, prompt, session.settings["repetition_penalty"])
            ids_b = greedy_ids(sock_b, prompt, session.settings["repetition_penalty"])
            expected = first_index_where_they_part(ids_a, ids_b)
            assert expected is not None, "the tiny model's W8A16 replies should part within the reply"
            assert pair.first_diff == expected
            label = str(pair.query_one(".pair-diff").render())
            assert f"first difference at token {expected}" in label
            assert MARK in str(pair.left.query_one(".message-body").render())
            assert pair.left.kept and not pair.right.kept
            await pilot.press("f5")  # keep B's reply
            await wait_for(pilot, lambda: pair.right.kept, what="B kept")
            await type_and_send(pilot, "Why?")
            await wait_for(pilot, lambda: pair_done(app, 2), timeout=90, what="the second pair")
            with SessionStore(db) as store:
                msgs = store.messages(sid)
                session = store.get_session(sid)
            assert msgs[1].token_ids == ids_b  # the chat goes on from the kept reply
            again = greedy_ids(tui_server.sock, build_messages(session, msgs[:3]),
                               session.settings["repetition_penalty"])
            assert msgs[3].token_ids == again  # A's second reply answered a prompt holding B's reply

    asyncio.run(main())
    with SessionStore(db) as store:
        doc = json.loads(store.export(sid, "json"))
    first = doc["messages"][1]
    [alt] = first["alternatives"]
    assert alt["first_diff"] == expected and alt["token_ids"] == ids_a  # A's reply, kept as the alternative
    assert alt["engine"].startswith("A: ") and "w8a16" in alt["chosen_engine"]
    assert len(doc["messages"][3]["alternatives"]) == 1


def test_a_against_itself_agrees_fully_and_k_or_regenerate_work_on_the_pair(tui_server, tmp_path):
    db = tmp_path / "s.db"
    app, sid = new_chat(db, tui_server.sock, max_new_tokens=16)

    async def main():
        async with ready(app) as pilot:
            await open_compare(pilot, app, socket=str(tui_server.sock))  # an engine already running
            await type_and_send(pilot, "Hello there")
            await wait_for(pilot, lambda: pair_done(app, 1), timeout=90, what="the pair")
            pair = pairs(app)[0]
            assert pair.first_diff is None and pair.agreement == 1.0
            assert pair.left.content == pair.right.content and pair.left.content
            assert "identical replies" in str(pair.query_one(".pair-diff").render())
            assert "16 tokens" in str(pair.right.query_one(".message-footer").render())
            pair.right.focus()
            await pilot.press("k")  # the key on a column
            await wait_for(pilot, lambda: pair.right.kept and not pair.left.kept, what="the right reply kept")
            with SessionStore(db) as store:
                [alt] = store.alternatives(sid)[store.messages(sid)[-1].id]
            assert alt.engine.startswith("A: ") and alt.chosen_engine.startswith("B: ")
            chat(app).query_one(PromptInput).focus()
            await pilot.press("ctrl+r")  # regenerate: a new pair replaces the last one
            # a new pair object replaces the old one (its two 16-token replies may end between two polls)
            await wait_for(pilot, lambda: pair_done(app, 1) and pairs(app)[0] is not pair, timeout=90,
                           what="the regenerated pair")
            assert pairs(app)[0].agreement == 1.0
        with SessionStore(db) as store:
            msgs = store.messages(sid)
            assert [m.role for m in msgs] == ["user", "assistant"]
            assert list(store.alternatives(sid)) == [msgs[1].id]

    asyncio.run(main())


def test_engine_b_that_cannot_start_shows_its_error_and_a_still_answers(tui_server, tmp_path):
    db = tmp_path / "s.db"
    app, sid = new_chat(db, tui_server.sock, max_new_tokens=8)
    nowhere = tmp_path / "nothing.sock"

    async def main():
        async with ready(app) as pilot:
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, ComparePickScreen), what="the compare dialog")
            app.screen.query_one("#cmp-socket").value = str(nowhere)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: chat(app).comparison and chat(app).comparison.state == "failed",
                           what="B failed")
            assert "no engine listens" in str(chat(app).query_one("#compare-bar").render())
            await type_and_send(pilot, "Hello")
            await wait_for(pilot, lambda: pair_done(app, 1), timeout=60, what="the pair")
            pair = pairs(app)[0]
            assert pair.left.status == "complete" and pair.left.content
            assert pair.right.status == "error"
            footer = str(pair.right.query_one(".message-footer").render())
            assert footer.startswith("error: engine B is not running") and "no engine listens" in footer
            assert "not compared" in str(pair.query_one(".pair-diff").render())

    asyncio.run(main())


def test_engine_b_stopped_mid_reply_leaves_a_streaming(tui_server, tiny_model, runtime, tmp_path):
    db = tmp_path / "s.db"
    app, sid = new_chat(db, tui_server.sock, max_new_tokens=400)

    async def main():
        async with ready(app) as pilot:
            await open_compare(pilot, app, model=str(tiny_model), dtype="float32", device="cpu")  # started
            await type_and_send(pilot, "Tell me a long story")
            await wait_for(pilot, lambda: pairs(app) and len(pairs(app)[0].right.content) > 5, timeout=60,
                           what="B's first tokens")
            stopping = asyncio.create_task(asyncio.to_thread(  # as `qwen-chat stop` from another terminal
                stop_server, Path(chat(app).comparison.link.socket_path), 20))
            pair = pairs(app)[0]
            await wait_for(pilot, lambda: pair.right.status == "error", timeout=30, what="B's error")
            assert pair.left.status == "streaming"  # A goes on
            await stopping
            footer = str(pair.right.query_one(".message-footer").render())
            assert footer.startswith("error: ") and ("shutting down" in footer or "stopped" in footer), footer
            await pilot.press("escape")  # and the app still answers keys: Esc stops A
            await wait_for(pilot, lambda: not chat(app).streaming, what="the stop")
            assert pair.left.status == "interrupted" and len(pair.left.content) > 5
        with SessionStore(db) as store:
            reply = store.messages(sid)[-1]
            [alt] = store.alternatives(sid)[reply.id]
            assert reply.status == "interrupted" and alt.status == "error" and alt.stats["error"] in footer

    asyncio.run(main())


def test_engine_a_stopped_mid_reply_leaves_b_streaming(engine_b, tiny_model, runtime, tmp_path):
    _, sock_b = engine_b
    db = tmp_path / "s.db"
    # A: started by the app in the test's runtime folder
    app, sid = new_chat(db, model=str(tiny_model), max_new_tokens=400)

    async def main():
        async with ready(app, timeout=120) as pilot:
            await open_compare(pilot, app, socket=str(sock_b))
            await type_and_send(pilot, "Tell me a long story")
            await wait_for(pilot, lambda: pairs(app) and len(pairs(app)[0].left.content) > 5, timeout=60,
                           what="A's first tokens")
            stopping = asyncio.create_task(asyncio.to_thread(stop_server, Path(app.link.socket_path), 20))
            pair = pairs(app)[0]
            await wait_for(pilot, lambda: pair.left.status == "error", timeout=30, what="A's error")
            assert pair.right.status == "streaming"  # B goes on
            await stopping
            await wait_for(pilot, lambda: app.engine_state == "down", what="A marked down")
            assert str(pair.left.query_one(".message-footer").render()).startswith("error: ")
            await pilot.press("escape")
            await wait_for(pilot, lambda: not chat(app).streaming, what="the stop")
            assert pair.right.status in ("interrupted", "complete") and len(pair.right.content) > 5
        with SessionStore(db) as store:
            reply = store.messages(sid)[-1]
            [alt] = store.alternatives(sid)[reply.id]
            assert reply.status == "error" and alt.content == pair.right.content

    asyncio.run(main())
