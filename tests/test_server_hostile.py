"""Hostile input against a real engine server process (tiny checkpoint, real Unix socket): a bad field
is refused with an error event naming it, one client's request never stalls or cuts off another's
stream, and a bounded fuzz run (hypothesis) finds no line that kills the server, goes unanswered, or
ends another client's concurrent stream. See docs/protocol.md, "Bad input"."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inference import protocol as P
from inference.client import EngineClient
from tests.support.server import RawConn, start_server, stop_server, wait_ready

HUGE = b"1" + b"0" * 309  # 10**309 as a JSON integer literal: no float holds it


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    path, log = tmp / "s.sock", tmp / "server.log"
    proc = start_server(tiny_model, path, log=log)
    try:
        yield SimpleNamespace(path=path, proc=proc, log=log, health=wait_ready(path, proc, log))
    finally:  # a clean exit: no request left the server in a state it cannot shut down from
        assert stop_server(proc) == 0, log.read_text()[-3000:]


def tokens(evs: list[dict]) -> int:
    return sum(len(e["token_ids"]) for e in evs if e["event"] == "token")


def health_answers(conn: RawConn, rid="h", timeout=10.0) -> dict:
    conn.send({"op": "health", "id": rid})
    return conn.until(lambda e: e["id"] == rid, timeout=timeout)[-1]["result"]


def test_a_lone_surrogate_id_is_refused_and_costs_no_one_their_tokens(server):
    bad = RawConn(server.path)
    bad.send(b'{"op": "generate", "id": "\\ud800", "prompt_ids": [4, 5], "max_new_tokens": 300, '
             b'"ignore_eos": true}\n')
    bad.send({"op": "health", "id": "h"})
    answer = bad.until(lambda e: e["id"] == "h")
    # a stream beside it (the bad request, had it been taken, would step first) loses nothing
    other = RawConn(server.path)
    other.send({"op": "generate", "id": "a", "prompt_ids": [1, 2, 3], "max_new_tokens": 200, "ignore_eos": True})
    evs = other.until(lambda e: e["event"] in ("done", "error"), timeout=60)
    assert evs[-1]["event"] == "done" and evs[-1]["usage"]["completion_tokens"] == tokens(evs) == 200
    # and the bad request got its answer: an error naming the field, echoing nothing it cannot encode
    assert answer[0]["event"] == "error" and answer[0]["id"] is None and answer[0]["code"] == "bad_request"
    assert "'id' holds a lone UTF-16 surrogate" in answer[0]["message"]
    assert health_answers(bad)["status"] == "ready"
    bad.close()
    other.close()


@pytest.mark.parametrize("field, allowed", [
    ("top_k", "'top_k' must be an integer in 0..2147483647 (0 = off)"),
    ("max_new_tokens", "'max_new_tokens' must be an integer in 1..2147483647"),
    ("seed", "'seed' must be an integer in 0..2**63-1 or null"),
    ("temperature", "'temperature' must be a number in [0, 100] (0 = greedy)"),
])
def test_huge_integers_get_an_error_naming_the_range_and_the_connection_stays(server, field, allowed):
    conn = RawConn(server.path)
    conn.send(b'{"op": "generate", "id": "g", "prompt_ids": [1], "%s": %s}\n' % (field.encode(), HUGE))
    ev = conn.event()
    assert ev["event"] == "error" and ev["id"] == "g" and ev["code"] == "bad_request", ev
    assert ev["message"].startswith(allowed + ", got integer 100000"), ev
    conn.send(b'{"op": "health", "id": 9223372036854775808}\n')  # 2**63: not an id
    ev = conn.event()
    assert ev["event"] == "error" and "'id' is an integer outside -(2**63-1)..2**63-1" in ev["message"], ev
    conn.send({"op": "generate", "id": "ok", "prompt_ids": [1], "max_new_tokens": 2, field: 1})
    assert conn.until(lambda e: e["event"] in ("done", "error"))[-1]["event"] == "done"
    conn.close()


def test_trimming_ten_thousand_messages_stalls_no_other_client(server):
    chat = [{"role": ["user", "assistant"][i % 2], "content": f"message {i}"} for i in range(10_000)]
    other = RawConn(server.path)
    other.send({"op": "generate", "id": "a", "prompt_ids": [1, 2, 3], "max_new_tokens": 300, "ignore_eos": True})
    first = other.until(lambda e: e["event"] == "token")
    big = RawConn(server.path)
    big.send({"op": "generate", "id": "big", "messages": chat, "history": "trim", "max_new_tokens": 4})
    prober, slowest, done = RawConn(server.path), 0.0, []
    threading.Thread(target=lambda: done.append(big.until(lambda e: e["event"] in ("done", "error"), 120)),
                     daemon=True).start()
    while not done:  # health keeps answering at once while the big request is prepared
        t0 = time.monotonic()
        health_answers(prober, timeout=60)
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    assert done[0][-1]["event"] == "done" and done[0][-1]["usage"]["dropped_messages"] > 9000, done[0][-1]
    assert slowest < 2.0, f"health took {slowest:.1f} s while a trim request was prepared"
    evs, gaps, last = [], [], time.monotonic()
    while not evs or evs[-1]["event"] not in ("done", "error"):
        evs.append(other.event(timeout=60))
        gaps.append(time.monotonic() - last)
        last = time.monotonic()
    assert evs[-1]["event"] == "done" and tokens(first + evs) == 300 == evs[-1]["usage"]["completion_tokens"]
    assert max(gaps) < 5.0  # the other stream was never held up long enough to look dead
    for c in (other, big, prober):
        c.close()


def test_any_session_and_every_model_token_id_are_accepted(server, tiny_model):
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    assert vocab == 151936  # the tokenizer has 151851 ids; 151851..151935 are padded rows
    reply = [9707, 151851, 151935]  # what a random model emits: the app sends it back as history
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello", "token_ids": reply},
            {"role": "user", "content": "again"}]
    with EngineClient(server.path) as c:
        evs = list(c.generate(chat, max_new_tokens=2, session="s" * 1000))
        assert evs[-1]["event"] == "done", evs[-1]
        assert evs[-1]["usage"]["prompt_tokens"] == len(c.tokenize(messages=chat))
        assert list(c.generate(prompt_ids=reply, max_new_tokens=2))[-1]["event"] == "done"
    conn = RawConn(server.path)
    for req, where in [({"prompt_ids": [5, vocab]}, "'prompt_ids'[1]"),
                       ({"messages": chat[:1] + [{**chat[1], "token_ids": [vocab + 7]}]}, "messages[1].token_ids[0]")]:
        for op in ("generate", "tokenize"):
            if op == "tokenize" and "prompt_ids" in req:
                continue
            conn.send({"op": op, "id": "v", **req})
            ev = conn.event()
            assert ev["event"] == "error" and ev["code"] == "bad_request", ev
            assert ev["message"].startswith(f"{where} is {vocab + 7 if 'messages' in req else vocab}, outside the "
                                            f"model's vocabulary: token ids must be in 0..{vocab - 1}"), ev
    conn.close()


# --- fuzz: any line, beside a running stream ------------------------------------------------------------
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(st.characters() | surrogates, max_size=12)  # ids of at most 12 characters: never a probe's
ints = st.integers() | st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**309, 151935, 151936])
atoms = st.none() | st.booleans() | ints | st.floats() | texts
values = st.recursive(atoms, lambda k: st.lists(k, max_size=3) | st.dictionaries(texts, k, max_size=3),
                      max_leaves=8)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "bot"]), "content": texts},
    optional={"token_ids": st.lists(ints, max_size=3) | values}), max_size=4)
FIELD_VALUES = {
    "id": texts | ints | values, "prompt_ids": st.lists(ints, max_size=4) | values, "messages": messages | values,
    "history": st.sampled_from(["trim", "error"]) | values, "max_new_tokens": st.integers(1, 6) | ints | values,
    "temperature": st.floats(0, 2) | values, "top_k": st.integers(0, 50) | ints, "seed": ints | values,
    **{k: values for k in ("top_p", "repetition_penalty", "ignore_eos", "session", "text", "protocol", "bogus")},
}
VALID = [  # requests that pass, mutated below by zero to two fields
    {"op": "generate", "id": "g", "prompt_ids": [1, 2, 3], "max_new_tokens": 4},
    {"op": "generate", "id": 5, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 3,
     "history": "trim"},
    {"op": "tokenize", "id": "t", "text": "hello"}, {"op": "health", "id": "h"}, {"op": "stats"},
    {"op": "cancel", "id": "g"}, {"op": "shutdown", "bogus": 1}, {"op": "nope"}]
mutations = st.lists(st.one_of(*[st.tuples(st.just(k), v) for k, v in FIELD_VALUES.items()]), max_size=2)
requests = st.tuples(st.sampled_from(VALID), mutations).map(lambda t: {**t[0], **dict(t[1])})
lines = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),  # \\ud800 escapes, 10**309 as an integer literal
    requests.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),  # not UTF-8
    st.tuples(requests, st.integers(1, 60)).map(lambda t: json.dumps(t[0]).encode()[:t[1]]),  # cut short
    st.binary(max_size=80), values.map(lambda v: json.dumps(v).encode()),
).map(lambda b: b.replace(b"\n", b" ") + b"\n")


def expected(line: bytes):
    """What the server must answer, by the reference validation: ProtocolError, a request, or nothing."""
    if not line.strip():
        return None  # blank lines are skipped
    try:
        return P.parse_request(P.decode_line(line[:-1]))
    except P.ProtocolError as e:
        return e


def check_answered(conn: RawConn, line: bytes, probe: str) -> None:
    want = expected(line)
    event(type(want).__name__)
    if isinstance(want, P.SimpleRequest) and want.op == "shutdown":
        return  # the one valid line that rightly stops the server
    conn.send(line)
    if isinstance(want, P.GenerateRequest):  # a stream: cancelled once it runs, ends with done or error
        evs = conn.until(lambda e: e["id"] == want.id, timeout=20)
        event(f"generate -> {evs[-1]['event']}")
        if evs[-1]["event"] == "token":
            conn.send({"op": "cancel", "id": want.id})
            evs += conn.until(lambda e: e["id"] == want.id and e["event"] in ("done", "error"), timeout=20)
        assert all(e["id"] == want.id for e in evs) and evs[-1]["event"] in ("done", "error"), (line, evs)
    elif isinstance(want, (P.TokenizeRequest, P.SimpleRequest)):  # one reply (stats: from the engine thread)
        evs = conn.until(lambda e: e["id"] == want.id, timeout=20)
        assert len(evs) == 1 and evs[0]["event"] in ("result", "error"), (line, evs)
    conn.send({"op": "health", "id": probe})  # answered after every line before it
    evs = conn.until(lambda e: e["id"] == probe, timeout=20)
    assert evs[-1]["event"] == "result" and evs[-1]["result"]["status"] == "ready", (line, evs)
    got = evs[:-1]
    if isinstance(want, P.ProtocolError):
        assert [(e["event"], e["id"], e["code"]) for e in got] == [("error", want.request_id, want.code)], (line, got)
    else:  # a blank line, a cancel (no reply), or a request whose answer was read above
        assert got == [], (line, got)


class Victim(threading.Thread):
    """Another client streaming greedy replies all along: every one must arrive whole."""

    def __init__(self, path, n=48):
        super().__init__(daemon=True)
        self.path, self.n, self.runs, self.bad = path, n, 0, []
        self.stop = threading.Event()

    def run(self):
        with EngineClient(self.path) as c:
            while not self.stop.is_set():
                evs = list(c.generate(prompt_ids=[7, 8, 9], max_new_tokens=self.n, ignore_eos=True,
                                      request_id=f"victim-{uuid.uuid4()}"))
                self.runs += 1
                end = evs[-1]
                if not (end["event"] == "done" and end["finish_reason"] == "length"
                        and tokens(evs) == end["usage"]["completion_tokens"] == self.n):
                    self.bad.append(end)


def test_fuzz_no_line_kills_the_server_goes_unanswered_or_cuts_off_another_stream(server):
    victim = Victim(server.path)
    victim.start()

    @settings(max_examples=int(os.environ.get("QWEN_CHAT_FUZZ_EXAMPLES", "100")), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(lines, min_size=1, max_size=4))
    def one_connection(batch):
        conn = RawConn(server.path)
        try:
            for line in batch:
                check_answered(conn, line, f"probe-{uuid.uuid4()}")
        finally:
            conn.close()
        assert server.proc.poll() is None, server.log.read_text()[-3000:]

    try:
        one_connection()
    finally:
        victim.stop.set()
        victim.join(60)
    assert victim.runs >= 1 and victim.bad == [], victim.bad
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]
