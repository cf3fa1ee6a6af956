"""Request validation and event encoding (inference/protocol.py), no server needed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import protocol as P


def parse(obj):
    return P.parse_request(obj)


def test_valid_requests_parse_into_their_types():
    g = parse({"op": "generate", "id": "a", "protocol": 1, "messages": [{"role": "user", "content": "hi"}],
               "max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1,
               "seed": 3, "ignore_eos": True, "session": "s1"})
    assert isinstance(g, P.GenerateRequest) and g.id == "a" and g.session == "s1" and g.prompt_ids is None
    sp = g.sampling_params()
    assert (sp.max_new_tokens, sp.temperature, sp.top_k, sp.seed, sp.ignore_eos) == (5, 0.7, 40, 3, True)
    g = parse({"op": "generate", "id": 7, "prompt_ids": [1, 2, 3]})
    assert g.prompt_ids == [1, 2, 3] and g.sampling == {} and g.sampling_params().greedy
    assert parse({"op": "cancel", "id": 7}) == P.CancelRequest(7)
    assert parse({"op": "tokenize", "text": "x"}) == P.TokenizeRequest(None, "x", None)
    for op in ("stats", "health", "shutdown"):
        assert parse({"op": op, "id": "q"}) == P.SimpleRequest(op, "q")


@pytest.mark.parametrize("obj, code, words", [
    ([1, 2], P.BAD_REQUEST, "must be a JSON object with an 'op', got array"),
    ({"op": None}, P.UNKNOWN_OP, "unknown op None"),
    ({"op": "health", "protocol": True}, P.UNSUPPORTED_PROTOCOL, "asked for True"),
    ({"op": "health", "extra": 1}, P.BAD_REQUEST, "unknown field 'extra' for op 'health'"),
    ({"op": "stats", "id": ""}, P.BAD_REQUEST, "1..256 characters"),
    ({"op": "stats", "id": 1.5}, P.BAD_REQUEST, "'id' must be a string or an integer, got number"),
    ({"op": "generate", "id": "g"}, P.BAD_REQUEST, "exactly one of 'prompt_ids' or 'messages'"),
    ({"op": "generate", "id": "g", "prompt_ids": "1 2"}, P.BAD_REQUEST, "got string"),
    ({"op": "generate", "id": "g", "prompt_ids": [True]}, P.BAD_REQUEST, "'prompt_ids'[0]"),
    ({"op": "generate", "id": "g", "prompt_ids": [-1]}, P.BAD_REQUEST, "non-negative integer token id"),
    ({"op": "generate", "id": "g", "messages": []}, P.BAD_REQUEST, "'messages' must not be empty"),
    ({"op": "generate", "id": "g", "messages": ["hi"]}, P.BAD_REQUEST, "messages[0] must be an object"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "x", "name": "n"}]},
     P.BAD_REQUEST, "messages[0]: unknown field 'name'"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user"}]}, P.BAD_REQUEST, "content must be a string"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "", "token_ids": [1.0]}]},
     P.BAD_REQUEST, "messages[0].token_ids[0]"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "max_new_tokens": 0}, P.BAD_REQUEST,
     "max_new_tokens must be a positive integer"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "temperature": -1}, P.BAD_REQUEST, "temperature"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "top_k": 1.0}, P.BAD_REQUEST, "'top_k' must be"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "seed": 2**64}, P.BAD_REQUEST, "'seed' must be"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "ignore_eos": 1}, P.BAD_REQUEST, "true or false"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "session": 5}, P.BAD_REQUEST, "'session' must be"),
    ({"op": "tokenize", "text": "a", "messages": [{"role": "user", "content": "b"}]}, P.BAD_REQUEST,
     "exactly one of 'text' or 'messages'"),
])
def test_invalid_requests_raise_precise_errors(obj, code, words):
    with pytest.raises(P.ProtocolError) as e:
        parse(obj)
    assert e.value.code == code and words in e.value.message
    assert e.value.request_id == (obj.get("id") if isinstance(obj, dict) and obj.get("id") not in ("", 1.5)
                                  else None)


def test_decode_line_rejects_non_json_nan_deep_nesting_and_oversize():
    assert P.decode_line(b'{"op": "health"}\n') == {"op": "health"}
    for line, words in [(b"\xff\xfe", "not valid UTF-8"), (b"{", "not valid JSON"),
                        (b'{"top_p": NaN}', "NaN is not valid JSON"), (b"[" * 50_000, "nested too deeply"),
                        (b" " * (P.MAX_LINE_BYTES + 2), "longer than the 1048576-byte limit")]:
        with pytest.raises(P.ProtocolError, match=words):
            P.decode_line(line)


def test_events_encode_as_one_compact_line():
    line = P.encode(P.token_event("r", [1], "é\n"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and "é".encode() in line
    assert json.loads(line) == {"id": "r", "event": "token", "token_ids": [1], "text": "é\n"}
    assert json.loads(P.encode(P.error_event(None, "m", P.BAD_JSON))) == {
        "id": None, "event": "error", "code": "bad_json", "message": "m"}
    assert P.request("generate", id="x", seed=None) == {"op": "generate", "protocol": 1, "id": "x"}


values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                      lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=8), k, max_size=3),
                      max_leaves=10)
fields = st.sampled_from(["op", "id", "prompt_ids", "messages", "max_new_tokens", "temperature", "top_p",
                          "top_k", "seed", "ignore_eos", "text", "session", "protocol", "zzz"])


@settings(max_examples=400, deadline=None)
@given(obj=st.dictionaries(fields, values, max_size=6),
       op=st.sampled_from([*P.OPS, None]))
def test_any_object_parses_or_raises_protocol_error(obj, op):
    if op is not None:
        obj["op"] = op
    try:
        req = parse(obj)
    except P.ProtocolError as e:
        assert e.message and e.code in (P.BAD_REQUEST, P.UNKNOWN_OP, P.UNSUPPORTED_PROTOCOL)
        return
    assert req.op == obj["op"]
