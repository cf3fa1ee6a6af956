"""What the sessions store holds: `Session` and `Message` records, settings, errors, helpers.

Stdlib only (no torch): the TUI imports this package.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")
STATUSES = ("complete", "streaming", "interrupted", "error")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_TITLE = "New chat"
# Qwen v1 chat generation_config (top_p 0.8, top_k off, repetition_penalty 1.1, 512 new tokens).
DEFAULT_SETTINGS = {
    "temperature": 1.0,
    "top_p": 0.8,
    "top_k": 0,
    "repetition_penalty": 1.1,
    "max_new_tokens": 512,
}
STAT_KEYS = ("ttft_ms", "decode_tok_s", "prompt_tokens", "cached_tokens", "completion_tokens")
ERROR_STAT = "error"  # the one text stat: why a reply with status "error" ended (what the user was shown)


class SessionError(ValueError):
    """A problem the user can fix; the message says what to do."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str):
        super().__init__(f"no session {session_id!r}: `qwen-chat sessions list` shows the ids")
        self.session_id = session_id


@dataclass
class Session:
    id: str
    title: str
    model: str
    system_prompt: str
    settings: dict
    created_at: float
    updated_at: float
    parent_id: str | None = None  # the session this one was forked from
    forked_at: int | None = None  # last message index copied from the parent


@dataclass
class Message:
    id: int
    session_id: str
    idx: int  # 0-based position in the session
    role: str
    content: str
    token_ids: list[int] = field(default_factory=list)
    status: str = "complete"
    stats: dict = field(default_factory=dict)
    created_at: float = 0.0


def session_from_row(row) -> Session:
    """A `Session` from a row of sessions(id, title, model, system_prompt, settings, created_at,
    updated_at, parent_id, forked_at)."""
    return Session(id=row[0], title=row[1], model=row[2], system_prompt=row[3], settings=json.loads(row[4]),
                   created_at=row[5], updated_at=row[6], parent_id=row[7], forked_at=row[8])


def message_from_row(row) -> Message:
    """A `Message` from a row of messages(id, session_id, idx, role, content, token_ids, status, stats,
    created_at)."""
    return Message(id=row[0], session_id=row[1], idx=row[2], role=row[3], content=row[4],
                   token_ids=unpack_ids(row[5]), status=row[6], stats=json.loads(row[7]), created_at=row[8])


def _number(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SessionError(f"setting {name} must be a number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise SessionError(f"setting {name} must be in {bracket}{lo}, {hi}], got {value!r}")
    return float(value)


def _integer(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SessionError(f"setting {name} must be an integer >= {lo}, got {value!r}")
    return value


def validate_settings(settings: dict | None, base: dict | None = None) -> dict:
    """Return `base` (default: DEFAULT_SETTINGS) updated with `settings`, every value checked."""
    if settings is not None and not isinstance(settings, dict):
        raise SessionError(f"settings must be a mapping of sampling fields, got {type(settings).__name__}")
    out = dict(DEFAULT_SETTINGS if base is None else base)
    for key, value in (settings or {}).items():
        if key not in DEFAULT_SETTINGS:
            raise SessionError(f"unknown setting {key!r}: use {', '.join(DEFAULT_SETTINGS)}")
        out[key] = value
    out["temperature"] = _number("temperature", out["temperature"], 0.0, 100.0)
    out["top_p"] = _number("top_p", out["top_p"], 0.0, 1.0, lo_open=True)
    out["top_k"] = _integer("top_k", out["top_k"], 0)
    out["repetition_penalty"] = _number("repetition_penalty", out["repetition_penalty"], 0.0, 10.0, True)
    out["max_new_tokens"] = _integer("max_new_tokens", out["max_new_tokens"], 1)
    return out


def check_role(role: str) -> str:
    if role not in ROLES:
        raise SessionError(f"unknown role {role!r}: use {', '.join(ROLES)}")
    return role


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise SessionError(f"unknown message status {status!r}: use {', '.join(STATUSES)}")
    return status


def check_stats(stats: dict | None) -> dict:
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        raise SessionError(f"message stats must be a mapping, got {type(stats).__name__}")
    for key, value in stats.items():
        if key == ERROR_STAT:
            if not isinstance(value, str):
                raise SessionError(f"message stat {key!r} must be a text, got {value!r}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SessionError(f"message stat {key!r} must be a number, got {value!r}")
    return dict(stats)


def pack_ids(token_ids) -> bytes:
    """Token ids as packed little-endian int32 (4 bytes a token)."""
    ids = list(token_ids or ())
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**31:
            raise SessionError(f"token ids must be non-negative 32-bit integers, got {t!r}")
    a = array("i", ids)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack_ids(blob: bytes | None) -> list[int]:
    a = array("i")
    a.frombytes(blob or b"")
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def title_from(text: str, limit: int = 40) -> str:
    """A session title from the first message: its first non-blank line, cut to about `limit` chars."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if not line:
        return DEFAULT_TITLE
    if len(line) <= limit:
        return line
    cut = line[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def this_writer() -> str:
    """Who streams a reply: "host:pid" of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def writer_alive(writer: str | None) -> bool:
    """Whether the process named by `this_writer()` elsewhere still runs on this host."""
    if not writer:
        return False
    host, _, pid_text = writer.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped process is a zombie: it writes nothing more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
