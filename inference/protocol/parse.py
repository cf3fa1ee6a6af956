"""Reading requests: one line into a JSON value (`decode_line`), a JSON value into a checked request
(`parse_request`), token ids against the model's vocabulary (`check_vocab`). Every refusal is one
`ProtocolError` whose message says what to send instead.
"""

from __future__ import annotations

import json

from inference.config import SamplingParams
from inference.errors import UserError
from inference.protocol.json_values import is_int, reject_constant, show, type_name
from inference.protocol.messages import (
    BAD_JSON,
    BAD_REQUEST,
    COMMON_FIELDS,
    HISTORY_MODES,
    LINE_TOO_LONG,
    MAX_ID_CHARS,
    MAX_INT,
    MAX_LINE_BYTES,
    MAX_MESSAGES,
    MAX_SEED,
    OP_FIELDS,
    OPS,
    PROTOCOL_VERSION,
    ROLES,
    SAMPLING_FIELDS,
    UNKNOWN_OP,
    UNSUPPORTED_PROTOCOL,
    CancelRequest,
    GenerateRequest,
    ProtocolError,
    Request,
    SimpleRequest,
    TokenizeRequest,
)


def decode_line(line: bytes) -> object:
    """Parse one line (without or with its trailing newline) into a JSON value, or raise ProtocolError."""
    if len(line) > MAX_LINE_BYTES + 1:
        raise ProtocolError(
            f"line of {len(line)} bytes is longer than the {MAX_LINE_BYTES}-byte limit", LINE_TOO_LONG
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"request is not valid UTF-8 ({e}); send one JSON object per line",
                            BAD_JSON) from e
    try:
        return json.loads(text, parse_constant=reject_constant)
    except RecursionError as e:
        raise ProtocolError("request JSON is nested too deeply", BAD_JSON) from e
    except ValueError as e:  # JSONDecodeError is a ValueError; so is Python's 4300-digit limit on ints
        if "integer string conversion" in str(e):
            raise ProtocolError("request holds an integer of more than 4300 digits; no field takes one",
                                BAD_JSON) from None
        raise ProtocolError(f"request is not valid JSON ({e}); send one JSON object per line",
                            BAD_JSON) from e


def _check_text(v: str, where: str) -> str:
    """A string that is safe to echo: no lone UTF-16 surrogate (JSON allows "\\ud800", UTF-8 does not)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ProtocolError(f"{where} holds a lone UTF-16 surrogate ({v[e.start]!r} at character {e.start}), "
                            "which is not valid Unicode: send UTF-8 text") from None
    return v


def _opt_str(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise ProtocolError(f"'{key}' must be a string or null, got {type_name(v)}")
    return None if v is None else _check_text(v, f"'{key}'")


def _check_id(v: object, required: bool) -> str | int | None:
    if v is None:
        if required:
            raise ProtocolError("missing 'id': give every generate/cancel request a string id")
        return None
    if isinstance(v, str):
        if not 1 <= len(v) <= MAX_ID_CHARS:
            raise ProtocolError(
                f"'id' must be a string of 1..{MAX_ID_CHARS} characters, got {len(v)} characters")
        return _check_text(v, "'id'")
    if is_int(v):
        if abs(v) <= MAX_SEED:
            return v
        raise ProtocolError(f"'id' is an integer outside -(2**63-1)..2**63-1 ({show(v)}): "
                            f"use a smaller integer or a string of 1..{MAX_ID_CHARS} characters")
    raise ProtocolError(f"'id' must be a string or an integer, got {type_name(v)}")


def _check_token_ids(v: object, where: str, allow_empty: bool) -> list[int]:
    if not isinstance(v, list):
        raise ProtocolError(f"{where} must be an array of token ids (integers), got {type_name(v)}")
    if not v and not allow_empty:
        raise ProtocolError(f"{where} must not be empty")
    for i, t in enumerate(v):
        if not is_int(t) or not 0 <= t <= MAX_INT:
            raise ProtocolError(f"{where}[{i}] must be a token id (an integer in 0..{MAX_INT}), "
                                f"got {type_name(t)} {show(t)}")
    return v


def _check_messages(v: object) -> list[dict]:
    if not isinstance(v, list):
        raise ProtocolError(f"'messages' must be an array of {{role, content}} objects, got {type_name(v)}")
    if not v:
        raise ProtocolError("'messages' must not be empty")
    if len(v) > MAX_MESSAGES:
        raise ProtocolError(f"'messages' has {len(v)} entries, more than the {MAX_MESSAGES} allowed")
    for n, m in enumerate(v):
        if not isinstance(m, dict):
            raise ProtocolError(f"messages[{n}] must be an object with role and content, got {type_name(m)}")
        unknown = sorted(set(m) - {"role", "content", "token_ids"})
        if unknown:
            raise ProtocolError(
                f"messages[{n}]: unknown field {unknown[0]!r} (allowed: role, content, token_ids)"[:300])
        if m.get("role") not in ROLES:
            raise ProtocolError(
                f"messages[{n}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}"[:300])
        if not isinstance(m.get("content"), str):
            raise ProtocolError(f"messages[{n}].content must be a string, got {type_name(m.get('content'))}")
        _check_text(m["content"], f"messages[{n}].content")
        if m.get("token_ids") is not None:
            _check_token_ids(m["token_ids"], f"messages[{n}].token_ids", allow_empty=True)
    return v


def _check_sampling(obj: dict) -> dict:
    kw = {}
    for name, (ok, desc) in SAMPLING_FIELDS.items():
        if name not in obj:
            continue
        v = obj[name]
        if not ok(v):
            raise ProtocolError(f"'{name}' must be {desc}, got {type_name(v)} {show(v)}")
        kw[name] = v
    try:
        SamplingParams(**kw)
    except (UserError, ValueError, OverflowError) as e:
        raise ProtocolError(str(e)) from e
    return kw


def check_vocab(req: GenerateRequest | TokenizeRequest, vocab_size: int) -> None:
    """Refuse token ids the model has no row for. Every id below `vocab_size` is fine, the padded rows
    past the tokenizer's vocabulary (151851.. on Qwen) included: a model may emit them."""
    lists = [("'prompt_ids'", getattr(req, "prompt_ids", None))]
    lists += [(f"messages[{n}].token_ids", m.get("token_ids")) for n, m in enumerate(req.messages or ())]
    for where, ids in lists:
        if ids and max(ids) >= vocab_size:
            i = next(i for i, t in enumerate(ids) if t >= vocab_size)
            raise ProtocolError(f"{where}[{i}] is {show(ids[i])}, outside the model's vocabulary: "
                                f"token ids must be in 0..{vocab_size - 1}", BAD_REQUEST, req.id)


def parse_request(obj: object) -> Request:
    """Validate one decoded JSON value as a request; raises ProtocolError with the request's id if known."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a request must be a JSON object with an 'op', got {type_name(obj)}")
    raw_id = obj.get("id")
    try:
        rid = _check_id(raw_id, required=False)
    except ProtocolError:
        rid = None
    try:
        return _parse(obj)
    except ProtocolError as e:
        e.request_id = rid
        raise


def _parse(obj: dict) -> Request:
    op = obj.get("op")
    if op not in OPS:
        if "op" not in obj:
            raise ProtocolError(f"missing 'op': use one of {', '.join(OPS)}", UNKNOWN_OP)
        raise ProtocolError(f"unknown op {op!r}: use one of {', '.join(OPS)}"[:300], UNKNOWN_OP)
    version = obj.get("protocol", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"this server speaks protocol {PROTOCOL_VERSION}, the request asked for {version!r}; "
            "use a client and server from the same qwen-chat version"[:300],
            UNSUPPORTED_PROTOCOL,
        )
    allowed = (*COMMON_FIELDS, *OP_FIELDS[op])
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise ProtocolError(
            f"unknown field {unknown[0]!r} for op {op!r} (allowed: {', '.join(allowed)})"[:400])
    rid = _check_id(obj.get("id"), required=op in ("generate", "cancel"))
    if op == "generate":
        has_ids, has_msgs = obj.get("prompt_ids") is not None, obj.get("messages") is not None
        if has_ids == has_msgs:
            raise ProtocolError("generate needs exactly one of 'prompt_ids' or 'messages'")
        prompt_ids = _check_token_ids(obj["prompt_ids"], "'prompt_ids'", False) if has_ids else None
        messages = _check_messages(obj["messages"]) if has_msgs else None
        session = _opt_str(obj, "session")
        history = obj.get("history", "error")
        if history not in HISTORY_MODES:
            raise ProtocolError(f"'history' must be one of {', '.join(HISTORY_MODES)}, got {history!r}"[:300])
        if history == "trim" and not has_msgs:
            raise ProtocolError("'history': 'trim' applies to 'messages' (prompt_ids are used as given)")
        return GenerateRequest(rid, prompt_ids, messages, _check_sampling(obj), session, history)
    if op == "cancel":
        return CancelRequest(rid)
    if op == "tokenize":
        has_text, has_msgs = obj.get("text") is not None, obj.get("messages") is not None
        if has_text == has_msgs:
            raise ProtocolError("tokenize needs exactly one of 'text' or 'messages'")
        return TokenizeRequest(rid, _opt_str(obj, "text"), _check_messages(obj["messages"]) if has_msgs else None)
    return SimpleRequest(op, rid)
