"""Saved conversations in SQLite (stdlib only, no torch): `SessionStore`, `qwen-chat sessions ...`."""

from sessions.records import (
    DEFAULT_SETTINGS,
    DEFAULT_SYSTEM_PROMPT,
    Message,
    Session,
    SessionError,
    SessionNotFound,
    title_from,
)
from sessions.store import SessionStore, default_db_path

__all__ = [
    "DEFAULT_SETTINGS",
    "DEFAULT_SYSTEM_PROMPT",
    "Message",
    "Session",
    "SessionError",
    "SessionNotFound",
    "SessionStore",
    "default_db_path",
    "title_from",
]
