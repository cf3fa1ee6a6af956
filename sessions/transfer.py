"""Export a session as JSON (round-trips through import, token ids included) or Markdown (to read)."""

from __future__ import annotations

import json
import math
import time

from sessions.records import (
    ROLES,
    STATUSES,
    Message,
    Session,
    SessionError,
    check_stats,
    validate_settings,
)

FORMAT = "qwen-chat-session"
VERSION = 1


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def to_json(session: Session, messages: list[Message]) -> str:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "session": {
            "id": session.id, "title": session.title, "model": session.model,
            "system_prompt": session.system_prompt, "settings": session.settings,
            "created_at": session.created_at, "updated_at": session.updated_at,
            "parent_id": session.parent_id, "forked_at": session.forked_at,
        },
        "messages": [
            {"idx": m.idx, "role": m.role, "content": m.content, "token_ids": m.token_ids, "status": m.status,
             "stats": m.stats, "created_at": m.created_at}
            for m in messages
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def to_markdown(session: Session, messages: list[Message]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in session.settings.items())
    out = [f"# {session.title}", "",
           f"- session: `{session.id}`",
           f"- model: {session.model or '(not set)'}",
           f"- created: {_iso(session.created_at)}, updated: {_iso(session.updated_at)}",
           f"- settings: {settings}"]
    if session.parent_id:
        out.append(f"- forked from `{session.parent_id}` at message {session.forked_at}")
    out.append("")
    if session.system_prompt:
        out += ["## System", "", session.system_prompt, ""]
    for m in messages:
        out += [f"## {m.role.capitalize()} ({m.idx})", "", m.content or "_(empty)_", ""]
        notes, stats = [], {k: v for k, v in m.stats.items() if k != "error"}
        if m.status != "complete":
            notes.append(f"{m.status}: {m.stats['error']}" if m.stats.get("error") else m.status)
        if stats:
            notes.append(", ".join(f"{k} {_fmt(v)}" for k, v in stats.items()))
        if notes:
            out += [f"_({'; '.join(notes)})_", ""]
    return "\n".join(out)


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _field(obj: dict, key: str, kind, where: str, default=None):
    value = obj.get(key, default)
    if value is None and default is None and kind is not type(None):
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise SessionError(f"import: {where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def parse_json(text: str) -> dict:
    """Check a JSON export and return it normalised; every problem is a SessionError naming the field."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise SessionError(f"import: not valid JSON ({e}); give a file written by "
                           "`qwen-chat sessions export ID --format json`") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionError(f"import: not a qwen-chat session export (expected \"format\": \"{FORMAT}\"); "
                           "give a file written by `qwen-chat sessions export ID --format json`")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise SessionError(f"import: export version {doc.get('version')!r} is not supported "
                           f"(this qwen-chat reads up to {VERSION}); upgrade qwen-chat")
    s = doc.get("session")
    if not isinstance(s, dict):
        raise SessionError("import: the \"session\" object is missing")
    session = {
        "id": _field(s, "id", str, "session") or "",
        "title": _field(s, "title", str, "session", "Imported chat"),
        "model": _field(s, "model", str, "session", ""),
        "system_prompt": _field(s, "system_prompt", str, "session", ""),
        "settings": _field(s, "settings", dict, "session", {}),
        "created_at": _field(s, "created_at", float, "session"),
        "updated_at": _field(s, "updated_at", float, "session"),
    }
    try:
        validate_settings(session["settings"])
    except SessionError as e:
        raise SessionError(f"import: session.settings: {e}") from e
    raw_messages = doc.get("messages", [])
    if not isinstance(raw_messages, list):
        raise SessionError("import: \"messages\" must be a list")
    messages = []
    for i, m in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise SessionError(f"import: {where} must be an object")
        role = _field(m, "role", str, where, "")
        if role not in ROLES:
            raise SessionError(f"import: {where}.role {role!r} is not one of {', '.join(ROLES)}")
        status = _field(m, "status", str, where, "complete")
        if status not in STATUSES:
            raise SessionError(f"import: {where}.status {status!r} is not one of {', '.join(STATUSES)}")
        ids = _field(m, "token_ids", list, where, [])
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in ids):
            raise SessionError(f"import: {where}.token_ids must be a list of non-negative integers")
        try:
            stats = check_stats(_field(m, "stats", dict, where, {}))
        except SessionError as e:
            raise SessionError(f"import: {where}: {e}") from e
        messages.append({
            "role": role, "content": _field(m, "content", str, where, ""), "token_ids": ids,
            # a reply that was streaming when exported can never finish now
            "status": "interrupted" if status == "streaming" else status,
            "stats": stats, "created_at": _field(m, "created_at", float, where),
        })
    return {"session": session, "messages": messages}
