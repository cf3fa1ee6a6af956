"""The wire protocol's vocabulary: limits, ops, error codes, request types and the events the server sends.

Requests and events are JSON objects, one per line, UTF-8, at most `MAX_LINE_BYTES` per line
(docs/protocol.md). No torch here: the Textual app and the client import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from inference.config import SamplingParams, in_sampling_range, sampling_range_text
from inference.errors import UserError
from inference.protocol.json_values import is_int, is_number

__all__ = ["BAD_JSON", "BAD_REQUEST", "COMMON_FIELDS", "CancelRequest", "DISCONNECTED", "DUPLICATE_ID", "ENGINE_ERROR",
           "FINISH_REASONS", "GenerateRequest", "HISTORY_MODES", "INTERNAL_ERROR", "LINE_TOO_LONG", "MAX_ID_CHARS",
           "MAX_INT", "MAX_LINE_BYTES", "MAX_MESSAGES", "MAX_SEED", "NOT_READY", "OPS", "OP_FIELDS", "OVERLOADED",
           "PROMPT_TOO_LONG", "PROTOCOL_VERSION", "ProtocolError", "ROLES", "Request", "SAMPLING_FIELDS",
           "SHUTTING_DOWN", "SimpleRequest", "TokenizeRequest", "UNKNOWN_OP", "UNSUPPORTED_PROTOCOL", "done_event",
           "encode", "error_event", "request", "result_event", "token_event"]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20  # 1 MiB per line, requests and events alike
MAX_ID_CHARS = 256
MAX_MESSAGES = 10_000
MAX_SEED = 2**63 - 1  # also the largest integer id (in magnitude)
MAX_INT = 2**31 - 1  # max_new_tokens, top_k
OPS = ("generate", "cancel", "stats", "health", "tokenize", "shutdown")
FINISH_REASONS = ("stop", "length", "cancelled")
ROLES = ("system", "user", "assistant")

# error codes carried in error events ("code")
BAD_JSON = "bad_json"
LINE_TOO_LONG = "line_too_long"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
UNSUPPORTED_PROTOCOL = "unsupported_protocol"
DUPLICATE_ID = "duplicate_id"
PROMPT_TOO_LONG = "prompt_too_long"
NOT_READY = "not_ready"
OVERLOADED = "overloaded"
SHUTTING_DOWN = "shutting_down"
ENGINE_ERROR = "engine_error"
INTERNAL_ERROR = "internal_error"  # a server bug on this one request; logged, the connection stays open
DISCONNECTED = "disconnected"  # made by clients when the connection drops

SAMPLING_FIELDS = {  # request field -> (is the value allowed?, what is allowed)
    "max_new_tokens": (lambda v: is_int(v) and 1 <= v <= MAX_INT, f"an integer in 1..{MAX_INT}"),
    "temperature": (lambda v: is_number(v) and in_sampling_range("temperature", v),
                    f"a number in {sampling_range_text('temperature')} (0 = greedy)"),
    "top_p": (lambda v: is_number(v) and in_sampling_range("top_p", v), f"a number in {sampling_range_text('top_p')}"),
    "top_k": (lambda v: is_int(v) and 0 <= v <= MAX_INT, f"an integer in 0..{MAX_INT} (0 = off)"),
    "repetition_penalty": (lambda v: is_number(v) and in_sampling_range("repetition_penalty", v),
                           f"a number in {sampling_range_text('repetition_penalty')}"),
    "seed": (lambda v: v is None or (is_int(v) and 0 <= v <= MAX_SEED), "an integer in 0..2**63-1 or null"),
    "ignore_eos": (lambda v: isinstance(v, bool), "true or false"),
    "logprobs": (lambda v: v is None or (is_int(v) and 0 <= v <= 20), "an integer in 0..20 or null"),
    "prompt_logprobs": (lambda v: v is None or (is_int(v) and 0 <= v <= 20), "an integer in 0..20 or null"),
}
COMMON_FIELDS = ("op", "id", "protocol")
HISTORY_MODES = ("error", "trim")
OP_FIELDS = {"generate": ("prompt_ids", "messages", "session", "history", *SAMPLING_FIELDS),
             "tokenize": ("text", "messages"), "cancel": (), "stats": (), "health": (), "shutdown": ()}


class ProtocolError(UserError):
    """A request the server rejects; becomes one error event, the connection stays open."""

    def __init__(self, message: str, code: str = BAD_REQUEST, request_id: str | int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class GenerateRequest:
    id: str | int
    prompt_ids: list[int] | None  # exactly one of prompt_ids / messages
    messages: list[dict] | None
    sampling: dict = field(default_factory=dict)  # keyword arguments of SamplingParams
    session: str | None = None
    history: str = "error"  # "trim": drop the oldest turns of `messages` when the prompt outgrows the context
    op: str = "generate"

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.sampling)


@dataclass(frozen=True)
class CancelRequest:
    id: str | int
    op: str = "cancel"


@dataclass(frozen=True)
class TokenizeRequest:
    id: str | int | None
    text: str | None  # exactly one of text / messages
    messages: list[dict] | None
    op: str = "tokenize"


@dataclass(frozen=True)
class SimpleRequest:
    op: str  # stats | health | shutdown
    id: str | int | None = None


Request = GenerateRequest | CancelRequest | TokenizeRequest | SimpleRequest


# -- events -----------------------------------------------------------------------------------------------
def encode(obj: dict) -> bytes:
    """One JSON line (compact, UTF-8, newline-terminated). A string that UTF-8 cannot hold (a lone
    surrogate; requests holding one are refused, but events must never fail) is written as a \\u escape."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"


def token_event(rid, token_ids: list[int], text: str) -> dict:
    return {"id": rid, "event": "token", "token_ids": token_ids, "text": text}


def done_event(rid, finish_reason: str, usage: dict) -> dict:
    return {"id": rid, "event": "done", "finish_reason": finish_reason, "usage": usage}


def error_event(rid, message: str, code: str = BAD_REQUEST) -> dict:
    return {"id": rid, "event": "error", "code": code, "message": message}


def result_event(rid, op: str, result: dict) -> dict:
    return {"id": rid, "event": "result", "op": op, "result": result}


def request(op: str, **fields) -> dict:
    """A request object as clients send it (fields that are None are left out)."""
    return {"op": op, "protocol": PROTOCOL_VERSION, **{k: v for k, v in fields.items() if v is not None}}
