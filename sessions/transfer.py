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
VERSION = 2  # 2: replies may carry "alternatives" (the compare view's other engine)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _alt_json(a) -> dict:
    return {"engine": a.engine, "chosen_engine": a.chosen_engine, "content": a.content, "token_ids": a.token_ids,
            "status": a.status, "stats": a.stats, "first_diff": a.first_diff, "agreement": a.agreement,
            "created_at": a.created_at}


def _message_json(m: Message, alts: dict) -> dict:
    out = {"idx": m.idx, "role": m.role, "content": m.content, "token_ids": m.token_ids, "status": m.status,
           "stats": m.stats, "created_at": m.created_at}
    if alts.get(m.id):
        out["alternatives"] = [_alt_json(a) for a in alts[m.id]]
    return out


def to_json(session: Session, messages: list[Message], alternatives: dict | None = None) -> str:
    """`alternatives`: {message id: [Alternative]} (`SessionStore.alternatives`)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "session": {
            "id": session.id, "title": session.title, "model": session.model,
            "system_prompt": session.system_prompt, "settings": session.settings,
            "created_at": session.created_at, "updated_at": session.updated_at,
            "parent_id": session.parent_id, "forked_at": session.forked_at,
        },
        "messages": [_message_json(m, alternatives or {}) for m in messages],
    }
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def _notes(status: str, stats: dict) -> list[str]:
    notes, numbers = [], {k: v for k, v in stats.items() if k != "error"}
    if status != "complete":
        notes.append(f"{status}: {stats['error']}" if stats.get("error") else status)
    if numbers:
        notes.append(", ".join(f"{k} {_fmt(v)}" for k, v in numbers.items()))
    return [f"_({'; '.join(notes)})_", ""] if notes else []


def pair_line(a) -> str:
    """`first difference at token 7, agreement 0.42` for an alternative (what the compare view showed)."""
    if a.agreement is None:
        return "not compared (a reply failed)"
    diff = "identical" if a.first_diff is None else f"first difference at token {a.first_diff}"
    return f"{diff}, agreement {a.agreement:.3f}"


def to_markdown(session: Session, messages: list[Message], alternatives: dict | None = None) -> str:
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
        alts = (alternatives or {}).get(m.id) or []
        kept = f" · kept, {alts[0].chosen_engine}" if alts and alts[0].chosen_engine else ""
        out += [f"## {m.role.capitalize()} ({m.idx}){kept}", "", m.content or "_(empty)_", ""]
        out += _notes(m.status, m.stats)
        for a in alts:
            out += [f"### Alternative ({m.idx}) · {a.engine or 'another engine'}", "", f"_{pair_line(a)}_", "",
                    a.content or "_(empty)_", ""]
            out += _notes(a.status, a.stats)
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
        reply = _parse_reply(m, where)
        alts = _field(m, "alternatives", list, where, [])
        if alts and role != "assistant":
            raise SessionError(f"import: {where}: only replies (role assistant) have alternatives")
        messages.append({
            "alternatives": [_parse_alt(a, f"{where}.alternatives[{j}]") for j, a in enumerate(alts)],
            "role": role, **reply,
        })
    return {"session": session, "messages": messages}


def _parse_reply(r: dict, where: str) -> dict:
    """What a message and an alternative both hold: content, token_ids, status, stats and created_at."""
    status = _field(r, "status", str, where, "complete")
    if status not in STATUSES:
        raise SessionError(f"import: {where}.status {status!r} is not one of {', '.join(STATUSES)}")
    ids = _field(r, "token_ids", list, where, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in ids):
        raise SessionError(f"import: {where}.token_ids must be a list of non-negative integers")
    try:
        stats = check_stats(_field(r, "stats", dict, where, {}))
    except SessionError as e:
        raise SessionError(f"import: {where}: {e}") from e
    return {"content": _field(r, "content", str, where, ""), "token_ids": ids,
            # a reply that was streaming when exported can never finish now
            "status": "interrupted" if status == "streaming" else status,
            "stats": stats, "created_at": _field(r, "created_at", float, where)}


def _parse_alt(a, where: str) -> dict:
    if not isinstance(a, dict):
        raise SessionError(f"import: {where} must be an object")
    reply = _parse_reply(a, where)
    first_diff, agreement = a.get("first_diff"), a.get("agreement")
    if first_diff is not None and (not isinstance(first_diff, int) or isinstance(first_diff, bool) or first_diff < 0):
        raise SessionError(f"import: {where}.first_diff must be a non-negative integer or null")
    if agreement is not None and (not isinstance(agreement, (int, float)) or isinstance(agreement, bool)
                                  or not 0 <= agreement <= 1):
        raise SessionError(f"import: {where}.agreement must be a number in [0, 1] or null")
    return {"engine": _field(a, "engine", str, where, ""), "chosen_engine": _field(a, "chosen_engine", str, where, ""),
            "first_diff": first_diff, "agreement": agreement, **reply}
