"""A real engine server process on the tiny checkpoint: streaming, concurrency, cancel, disconnect,
slow readers, bad input (hostile input and the fuzz run: test_server_hostile.py). One server for the
whole module (started on a stale socket at the default path under a private XDG_RUNTIME_DIR)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest

from inference.client import AsyncEngineClient, EngineClient
from inference.client.paths import default_socket_path
from inference.model_path import model_id
from inference.tokenizer import QwenTokenizer
from tests.support.server import RawConn, start_server, stop_server, wait_ready

SEND_LIMIT = 32768
CHAT_A = [{"role": "user", "content": "Tell me a story about a cat."}]
CHAT_B = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    xdg = tmp_path_factory.mktemp("xdg")
    with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(xdg)}):
        path = default_socket_path(model_id(str(tiny_model)), device="cpu", dtype="float32")  # CPU_ARGS
    path.parent.mkdir(mode=0o755)  # too open: the server must make it private
    os.chmod(path.parent, 0o755)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening, closed: what a killed server leaves
    stale.close()
    log = xdg / "server.log"
    proc = start_server(tiny_model, None, "--send-buffer-limit", str(SEND_LIMIT),
                        env={"XDG_RUNTIME_DIR": str(xdg)}, log=log)
    try:
        health = wait_ready(path, proc, log)
        yield SimpleNamespace(path=path, proc=proc, health=health, log=log)
    finally:
        assert stop_server(proc) == 0, log.read_text()[-2000:]
        assert not path.exists(), "the socket file must be removed at shutdown"


def idle_stats(path, timeout=5.0) -> dict:
    """Stats once nothing runs (polls: a disconnect is noticed asynchronously)."""
    with EngineClient(path) as c:
        deadline = time.monotonic() + timeout
        while True:
            s = c.stats()
            if (s["running"] == 0 and s["waiting"] == 0 and s["requests"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.02)


def run(path, **kw) -> tuple[list[int], str, dict]:
    with EngineClient(path) as c:
        evs = list(c.generate(**kw))
    assert evs[-1]["event"] == "done", evs[-1]
    ids = [t for e in evs[:-1] for t in e["token_ids"]]
    return ids, "".join(e["text"] for e in evs[:-1]), evs[-1]


def test_default_socket_is_private_and_replaced_the_stale_one(server):
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(server.path.stat().st_mode)
    assert "removed the stale socket" in server.log.read_text()
    h = server.health
    assert (h["status"], h["protocol"], h["device"], h["dtype"], h["tp"]) == ("ready", 1, "cpu", "float32", 1)
    assert h["pid"] == server.proc.pid and h["progress"]["done"] == h["progress"]["total"] > 0


def test_tokenize_and_messages_prompt(server, tiny_model):
    tok = QwenTokenizer.from_dir(tiny_model)
    with EngineClient(server.path) as c:
        assert c.tokenize("Hello world") == tok.encode("Hello world") == [9707, 1879]
        chat = c.tokenize(messages=CHAT_A)
    assert chat == tok.chat_ids(CHAT_A)
    # a messages request runs exactly the prompt tokenize(messages) gave: same greedy output both ways
    a, _, done_a = run(server.path, messages=CHAT_A, max_new_tokens=8, ignore_eos=True)
    b, _, _ = run(server.path, prompt_ids=chat, max_new_tokens=8, ignore_eos=True)
    assert a == b and done_a["usage"]["prompt_tokens"] == len(chat)


def test_two_concurrent_clients_get_the_solo_tokens(server):
    kw = dict(max_new_tokens=24, ignore_eos=True)
    solo_a, text_a, _ = run(server.path, messages=CHAT_A, **kw)
    solo_b, text_b, _ = run(server.path, messages=CHAT_B, **kw)
    assert solo_a != solo_b and len(solo_a) == len(solo_b) == 24

    async def stream(chat):
        async with AsyncEngineClient(server.path) as c:
            return [e async for e in c.generate(messages=chat, **kw)]

    async def both():
        return await asyncio.gather(stream(CHAT_A), stream(CHAT_B))

    got_a, got_b = asyncio.run(both())
    for evs, solo, text in ((got_a, solo_a, text_a), (got_b, solo_b, text_b)):
        assert evs[-1]["event"] == "done" and evs[-1]["finish_reason"] == "length"
        assert [t for e in evs[:-1] for t in e["token_ids"]] == solo
        assert "".join(e["text"] for e in evs[:-1]) == text
        assert evs[-1]["usage"]["completion_tokens"] == 24


def test_cancel_stops_within_a_step_and_frees_blocks(server):
    conn = RawConn(server.path)
    conn.send({"op": "generate", "id": "long", "prompt_ids": list(range(100, 140)), "max_new_tokens": 400,
               "ignore_eos": True})
    before = conn.until(lambda e: e["event"] == "token")
    # cancel and stats in one write: the engine applies both between two steps, cancel first
    conn.send(b'{"op": "cancel", "id": "long"}\n{"op": "stats", "id": "s"}\n')
    evs = conn.until(lambda e: e["event"] == "done")
    conn.close()
    kinds = [e["event"] for e in evs]
    stats = next(e["result"] for e in evs if e["event"] == "result")
    # from the moment the engine took the cancel: no request running, its blocks free, no more tokens
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0, stats
    assert "token" not in kinds[kinds.index("result"):], kinds
    done = evs[-1]
    assert done["finish_reason"] == "cancelled"
    streamed = sum(len(e["token_ids"]) for e in before + evs if e["event"] == "token")
    assert done["usage"]["completion_tokens"] == streamed < 400


def test_cancel_from_another_connection(server):
    with EngineClient(server.path) as c, EngineClient(server.path) as other:
        evs = []
        for ev in c.generate(prompt_ids=[9, 8, 7], max_new_tokens=400, ignore_eos=True, request_id="u-1"):
            evs.append(ev)
            if len(evs) == 2:
                other.cancel("u-1")
        assert evs[-1]["event"] == "done" and evs[-1]["finish_reason"] == "cancelled"
        assert len(evs) < 10


def test_disconnect_mid_stream_frees_blocks_at_once(server):
    conn = RawConn(server.path)
    conn.send({"op": "generate", "id": 1, "prompt_ids": list(range(50, 90)), "max_new_tokens": 400,
               "ignore_eos": True})
    conn.until(lambda e: e["event"] == "token")
    with EngineClient(server.path) as c:
        assert c.stats()["running"] == 1
    t0 = time.monotonic()
    conn.close()
    stats = idle_stats(server.path)
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0, stats
    assert time.monotonic() - t0 < 2.0  # 400 tokens would take far longer: it was cancelled


def test_slow_reader_is_cancelled_without_stalling_others(server):
    slow = RawConn(server.path)  # sends 16 requests and reads nothing until the end
    for i in range(16):
        slow.send({"op": "generate", "id": i, "prompt_ids": [1000 + i, 7, 8], "max_new_tokens": 200,
                   "ignore_eos": True})
    result = {}
    fast = threading.Thread(target=lambda: result.update(
        ids=run(server.path, messages=CHAT_B, max_new_tokens=40, ignore_eos=True)[0]))
    fast.start()
    fast.join(60)
    assert len(result["ids"]) == 40  # the other client streamed to the end meanwhile
    stats = idle_stats(server.path, timeout=30)
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0, stats
    last = {}
    while len(last) < 16:
        ev = slow.event()
        if ev["event"] in ("done", "error"):
            last[ev["id"]] = ev
    codes = [e.get("code") for e in last.values()]
    assert "overloaded" in codes, codes
    assert all(e["event"] == "done" or e["code"] == "overloaded" for e in last.values())
    slow.send({"op": "health", "id": "h"})  # and the slow connection itself still works
    assert slow.until(lambda e: e["id"] == "h")[-1]["result"]["status"] == "ready"
    slow.close()


BAD_REQUESTS = [  # (request, code, words the message must contain)
    ({"op": "fly"}, "unknown_op", "unknown op 'fly'"),
    ({"id": 1}, "unknown_op", "missing 'op'"),
    ({"op": "generate", "prompt_ids": [1]}, "bad_request", "missing 'id'"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "messages": CHAT_A}, "bad_request", "exactly one"),
    ({"op": "generate", "id": "g", "prompt_ids": []}, "bad_request", "must not be empty"),
    ({"op": "generate", "id": "g", "prompt_ids": [1, "2"]}, "bad_request", "'prompt_ids'[1]"),
    ({"op": "generate", "id": "g", "prompt_ids": [999999]}, "bad_request", "outside the model's vocabulary"),
    ({"op": "generate", "id": "g", "prompt_ids": [1] * 1100}, "prompt_too_long", "1100 tokens"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "top_p": "high"}, "bad_request", "'top_p' must be"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "top_p": 1.5}, "bad_request", "in (0, 1], got number 1.5"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "max_new_tokens": True}, "bad_request", "max_new_tokens"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "temprature": 1}, "bad_request", "unknown field 'temprature'"),
    ({"op": "generate", "id": "g", "messages": [{"role": "bot", "content": "x"}]}, "bad_request", "role"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "x"},
                                                {"role": "system", "content": "y"}]}, "bad_request", "system"),
    ({"op": "generate", "id": "g", "messages": CHAT_A, "history": "all"}, "bad_request", "'history' must be one of"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "history": "trim"}, "bad_request", "applies to 'messages'"),
    ({"op": "health", "protocol": 2}, "unsupported_protocol", "protocol 1"),
    ({"op": "tokenize", "text": 5}, "bad_request", "'text' must be a string"),
    ({"op": "cancel"}, "bad_request", "missing 'id'"),
]


def long_chat(turns: int, tokens: int) -> list[dict]:
    """A conversation of `turns` user/assistant pairs (each message `tokens` ids) and a new question."""
    msgs = [{"role": "system", "content": "You are terse."}]
    for t in range(turns):
        msgs += [{"role": "user", "content": "", "token_ids": [1000 + t] * tokens},
                 {"role": "assistant", "content": "", "token_ids": [2000 + t] * tokens}]
    return msgs + [{"role": "user", "content": "And now?"}]


def finish(client: EngineClient, msgs, **kw) -> dict:
    return list(client.generate(msgs, max_new_tokens=8, **kw))[-1]


def test_history_trim_drops_oldest_turns_in_a_stable_chunk(server):
    with EngineClient(server.path) as c:
        limit = c.health()["max_model_len"]
        msgs = long_chat(turns=limit // 200 + 2, tokens=100)  # about 1.2x the window
        err = finish(c, msgs)
        assert err["event"] == "error" and err["code"] == "prompt_too_long"
        done = finish(c, msgs, history="trim")
        assert done["event"] == "done", done
        usage = done["usage"]
        assert usage["dropped_messages"] > 0 and usage["dropped_messages"] % 2 == 0  # whole user/assistant pairs
        assert usage["prompt_tokens"] <= 0.75 * limit
        # the next turn drops the same oldest turns, so the kept prefix is reused from the cache
        nxt = msgs[:-1] + [{"role": "user", "content": "", "token_ids": [3000] * 20},
                           {"role": "assistant", "content": "", "token_ids": [3001] * 20}] + msgs[-1:]
        again = finish(c, nxt, history="trim")["usage"]
        assert again["dropped_messages"] == usage["dropped_messages"]
        assert again["cached_tokens"] >= usage["prompt_tokens"] - 16 - 20
        short = finish(c, CHAT_A, history="trim")["usage"]  # fits: nothing dropped, no key
        assert "dropped_messages" not in short


def test_history_trim_keeps_the_newest_message(server):
    with EngineClient(server.path) as c:
        limit = c.health()["max_model_len"]
        msgs = long_chat(turns=2, tokens=10)[:-1] + [{"role": "user", "content": "", "token_ids": [7] * limit}]
        err = finish(c, msgs, history="trim")
        assert err["event"] == "error" and err["code"] == "prompt_too_long"
        assert "every earlier turn left out" in err["message"]


def test_bad_requests_get_precise_errors_and_the_connection_stays_usable(server):
    conn = RawConn(server.path)
    for req, code, words in BAD_REQUESTS:
        conn.send(req)
        ev = conn.event()
        assert ev["event"] == "error" and ev["code"] == code and words in ev["message"], (req, ev)
        assert ev["id"] == req.get("id")
    conn.send(b"{not json\n")
    assert conn.event()["code"] == "bad_json"
    conn.send(b"[" * 100_000 + b"\n")  # nested too deeply for a recursive parser
    assert conn.event()["code"] == "bad_json"
    conn.send(b"x" * (3 << 20) + b"\n")  # longer than the 1 MiB line limit
    assert conn.event()["code"] == "line_too_long"
    # a duplicate id is refused while the first stream goes on
    conn.send({"op": "generate", "id": "d", "prompt_ids": [5, 6], "max_new_tokens": 300, "ignore_eos": True})
    conn.send({"op": "generate", "id": "d", "prompt_ids": [5, 6], "max_new_tokens": 3})
    evs = conn.until(lambda e: e["event"] == "error")
    assert evs[-1]["code"] == "duplicate_id" and evs[-1]["id"] == "d"
    conn.send({"op": "cancel", "id": "d"})
    assert conn.until(lambda e: e["event"] == "done")[-1]["finish_reason"] == "cancelled"
    conn.send({"op": "generate", "id": "ok", "prompt_ids": [5, 6], "max_new_tokens": 3})
    assert conn.until(lambda e: e["event"] == "done")[-1]["usage"]["completion_tokens"] <= 3
    conn.close()


def test_logprobs_on_the_socket_come_with_each_greedy_token(server):
    with EngineClient(server.path) as c:
        evs = list(c.generate(prompt_ids=list(range(300, 320)), max_new_tokens=6, ignore_eos=True,
                              temperature=0, repetition_penalty=1.0, logprobs=2))
        with pytest.raises(ValueError, match="'logprobs' must be an integer in 0..20"):
            list(c.generate(prompt_ids=[1, 2], logprobs=21))
    tokens = [t for e in evs if e["event"] == "token" for t in e["token_ids"]]
    entries = [x for e in evs if e["event"] == "logprobs" for x in e["token"]]
    assert len(tokens) == len(entries) == 6
    for tok, (lp, alts) in zip(tokens, entries):
        assert len(alts) == 2 and alts[0][0] == tok and alts[0][1] == lp  # greedy: the best token was taken
        assert lp >= alts[1][1] and lp <= 0
