"""Request validation and event encoding (inference/protocol/), no server needed."""

from __future__ import annotations

import json
import sys

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
    ({"op": "generate", "id": "g", "prompt_ids": [-1]}, P.BAD_REQUEST, "'prompt_ids'[0] must be a token id (an "
     "integer in 0..2147483647), got integer -1"),
    ({"op": "generate", "id": "g", "messages": []}, P.BAD_REQUEST, "'messages' must not be empty"),
    ({"op": "generate", "id": "g", "messages": ["hi"]}, P.BAD_REQUEST, "messages[0] must be an object"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "x", "name": "n"}]},
     P.BAD_REQUEST, "messages[0]: unknown field 'name'"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user"}]}, P.BAD_REQUEST, "content must be a string"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "", "token_ids": [1.0]}]},
     P.BAD_REQUEST, "messages[0].token_ids[0]"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "max_new_tokens": 0}, P.BAD_REQUEST,
     "'max_new_tokens' must be an integer in 1..2147483647, got integer 0"),
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


HUGE = 10**309  # an integer literal: 310 digits, beyond any float


@pytest.mark.parametrize("name, words", [
    ("max_new_tokens", "'max_new_tokens' must be an integer in 1..2147483647, got integer 1000000000"),
    ("top_k", "'top_k' must be an integer in 0..2147483647 (0 = off), got integer 1000000000"),
    ("seed", "'seed' must be an integer in 0..2**63-1 or null, got integer 1000000000"),
    ("temperature", "'temperature' must be a number in [0, 100] (0 = greedy), got integer 1000000000"),
    ("top_p", "'top_p' must be a number in (0, 1], got integer 1000000000"),
    ("repetition_penalty", "'repetition_penalty' must be a number in (0, 10], got integer 1000000000"),
])
def test_huge_integers_are_refused_naming_the_field_and_range(name, words):
    line = b'{"op": "generate", "id": "g", "prompt_ids": [1], "%s": 1%s}' % (name.encode(), b"0" * 309)
    for sign in (1, -1):
        obj = P.decode_line(line.replace(b": 1", b": -1") if sign < 0 else line)
        assert obj[name] == sign * HUGE
        with pytest.raises(P.ProtocolError) as e:
            parse(obj)
        assert e.value.request_id == "g" and len(e.value.message) < 200
        assert (words if sign > 0 else words.replace("integer 1", "integer -1")) in e.value.message


def test_integer_ids_beyond_64_bits_are_refused_as_out_of_range():
    for rid in (2**63, -(2**63), HUGE):
        with pytest.raises(P.ProtocolError, match=r"'id' is an integer outside -\(2\*\*63-1\)..2\*\*63-1") as e:
            parse({"op": "health", "id": rid})
        assert "got integer" not in e.value.message and e.value.request_id is None
    assert parse({"op": "health", "id": 2**63 - 1}).id == 2**63 - 1
    assert parse({"op": "health", "id": -(2**63 - 1)}).id == -(2**63 - 1)


SURROGATE = "\ud800"


@pytest.mark.parametrize("obj, where", [
    ({"op": "generate", "id": SURROGATE, "prompt_ids": [1]}, "'id'"),
    ({"op": "health", "id": "a" + SURROGATE}, "'id'"),
    ({"op": "generate", "id": "g", "prompt_ids": [1], "session": SURROGATE}, "'session'"),
    ({"op": "generate", "id": "g", "messages": [{"role": "user", "content": "x" + SURROGATE}]},
     "messages[0].content"),
    ({"op": "tokenize", "id": "g", "text": "\udfff"}, "'text'"),
])
def test_lone_surrogates_are_refused_so_every_echo_is_valid_utf8(obj, where):
    line = json.dumps(obj).encode()  # as a client writes it: "\ud800" escapes are valid JSON
    with pytest.raises(P.ProtocolError) as e:
        parse(P.decode_line(line))
    assert e.value.message.startswith(f"{where} holds a lone UTF-16 surrogate")
    assert e.value.request_id == (None if where == "'id'" else "g")
    P.encode(P.error_event(e.value.request_id, e.value.message)).decode("utf-8")  # the answer is echoable
    assert parse({"op": "health", "id": "\U0001f600 ok"}).id == "\U0001f600 ok"  # a real pair is fine


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))
def test_encode_never_fails_and_writes_one_utf8_line(text):
    line = P.encode(P.error_event(text, text))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    ev = json.loads(line.decode("utf-8"))
    assert ev["event"] == "error" and len(ev["message"]) <= len(text)  # surrogates as \\u escapes
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert ev == {"id": text, "event": "error", "code": "bad_request", "message": text}


def test_session_is_any_string_and_token_ids_take_the_whole_model_vocabulary():
    g = parse({"op": "generate", "id": "g", "prompt_ids": [1], "session": "s" * 5000})
    assert g.session == "s" * 5000
    vocab = 151936  # Qwen's model vocabulary: the tokenizer's 151851 ids plus padded rows
    padded = [0, 151850, 151851, 151935]
    history = [{"role": "user", "content": "", "token_ids": padded}]
    for req in (parse({"op": "generate", "id": "g", "prompt_ids": padded}),
                parse({"op": "generate", "id": "g", "messages": history}),
                parse({"op": "tokenize", "id": "g", "messages": history})):
        P.check_vocab(req, vocab)  # accepted alike
        with pytest.raises(P.ProtocolError) as e:
            P.check_vocab(req, 151851)
        assert e.value.request_id == "g" and "[2] is 151851, outside the model's vocabulary" in e.value.message
        assert "token ids must be in 0..151850" in e.value.message
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "token_ids": [5, vocab]}]
    req = parse({"op": "generate", "id": "g", "messages": history})
    with pytest.raises(P.ProtocolError, match=r"messages\[1\].token_ids\[1\] is 151936, outside the model's"):
        P.check_vocab(req, vocab)


def test_decode_line_rejects_non_json_nan_deep_nesting_and_oversize():
    assert P.decode_line(b'{"op": "health"}\n') == {"op": "health"}
    for line, words in [(b"\xff\xfe", "not valid UTF-8"), (b"{", "not valid JSON"),
                        (b'{"top_p": NaN}', "NaN is not valid JSON"), (b"[" * 50_000, "nested too deeply"),
                        (b" " * (P.MAX_LINE_BYTES + 2), "longer than the 1048576-byte limit")]:
        with pytest.raises(P.ProtocolError, match=words):
            P.decode_line(line)
    if hasattr(sys, "get_int_max_str_digits"):  # Python's limit on int literals (3.11, 3.10.7)
        with pytest.raises(P.ProtocolError, match="integer of more than 4300 digits"):
            P.decode_line(b'{"seed": 1%s}' % (b"0" * 5000))


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


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [-1.0, 0.0, 1e-9, 0.5, 1.0, 1.0 + 1e-9, 10.0, 10.5, 100.0, 101.0])
def test_the_protocol_and_the_engine_accept_the_same_sampling_values(name, value):
    """One range per setting (config.SAMPLING_RANGES): a value the socket accepts is one SamplingParams takes."""
    from inference.config import SamplingParams
    from inference.errors import UserError

    line = json.dumps({"op": "generate", "id": 1, "prompt_ids": [1], name: value})
    try:
        P.parse_request(P.decode_line(line.encode()))
        wire = True
    except P.ProtocolError:
        wire = False
    try:
        SamplingParams(**{name: value})
        engine = True
    except UserError:
        engine = False
    assert wire == engine
