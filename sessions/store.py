"""`SessionStore`: conversations in SQLite (stdlib only).

Every public call is one transaction. A reply is written as a "streaming" row that `update_reply`
rewrites periodically; when a store opens, streaming rows whose writing process is gone become
"interrupted", so a killed app loses at most the unsaved tail of that reply, never earlier turns.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sessions import transfer
from sessions.alternatives import AlternativesMixin
from sessions.database import Database
from sessions.records import (
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TITLE,
    Message,
    Session,
    SessionError,
    SessionNotFound,
    check_role,
    check_stats,
    check_status,
    message_from_row,
    pack_ids,
    session_from_row,
    this_writer,
    title_from,
    validate_settings,
    writer_alive,
)
from sessions.schema import default_db_path

__all__ = ["SessionStore", "default_db_path", "title_from"]

_SESSION_COLS = "id, title, model, system_prompt, settings, created_at, updated_at, parent_id, forked_at"
_MESSAGE_COLS = "id, session_id, idx, role, content, token_ids, status, stats, created_at"


class SessionStore(AlternativesMixin, Database):
    """Conversations and their messages; every public call is one transaction (database.py)."""

    def __init__(self, path: str | Path | None = None):
        super().__init__(path)
        try:
            self.recovered = self.recover()
        except BaseException:
            self.close()
            raise

    def recover(self) -> int:
        """Mark streaming replies (and alternatives) whose process is gone as interrupted; returns how many."""
        return sum(self._recover_table(table) for table in ("alternatives", "messages"))

    def _recover_table(self, table: str) -> int:
        rows = self._read(f"SELECT id, writer FROM {table} WHERE status = 'streaming'")
        dead = [(row_id,) for row_id, writer in rows if not writer_alive(writer)]
        if dead:
            with self._tx() as c:
                c.executemany(f"UPDATE {table} SET status = 'interrupted', writer = NULL "
                              "WHERE id = ? AND status = 'streaming'", dead)
        return len(dead)

    def _insert_session(self, c, sid, title, model, system_prompt, settings: dict, created_at=None,
                        updated_at=None, parent_id=None, forked_at=None) -> str:
        """Insert a session row inside transaction `c`; a missing or taken id gets a fresh one."""
        now = time.time()
        if not sid or c.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone():
            sid = uuid.uuid4().hex[:12]
        c.execute(f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (sid, str(title), str(model), str(system_prompt), json.dumps(validate_settings(settings)),
                   created_at or now, updated_at or now, parent_id, forked_at))
        return sid

    def create_session(self, title: str = DEFAULT_TITLE, model: str = "",
                       system_prompt: str = DEFAULT_SYSTEM_PROMPT, settings: dict | None = None) -> Session:
        validate_settings(settings)  # fail before opening a transaction
        with self._tx() as c:
            sid = self._insert_session(c, None, title, model, system_prompt, settings)
        return self.get_session(sid)

    def empty_chat(self, model: str, settings: dict | None = None) -> str:
        """The id of an empty chat on `model` (what a new chat opens: empty ones are reused, never piled up):
        the newest untitled one without messages, made the latest, else a new one with `settings`."""
        rows = self._read(
            "SELECT id FROM sessions s WHERE title = ? AND model = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY updated_at DESC, rowid DESC LIMIT 1",
            (DEFAULT_TITLE, model))
        if rows:
            return self.update_session(rows[0][0]).id  # touched: it is the latest chat now
        return self.create_session(model=model, settings=settings).id

    def get_session(self, session_id: str) -> Session:
        rows = self._read(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise SessionNotFound(session_id)
        return session_from_row(rows[0])

    def list_sessions(self, search: str | None = None) -> list[Session]:
        """Newest (last updated) first; `search` matches titles and message text, case-insensitively."""
        order = " ORDER BY updated_at DESC, rowid DESC"
        if not search:
            return [session_from_row(r) for r in self._read(f"SELECT {_SESSION_COLS} FROM sessions" + order)]
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = (f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.title LIKE ?1 ESCAPE '\\' OR EXISTS "
               "(SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.content LIKE ?1 ESCAPE '\\')")
        return [session_from_row(r) for r in self._read(sql + order, (pattern,))]

    def resolve_id(self, prefix: str) -> str:
        """The id of the session whose id is `prefix` or starts with it (unique), for the CLI."""
        if self._read("SELECT 1 FROM sessions WHERE id = ?", (prefix,)):
            return prefix
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = "SELECT id FROM sessions WHERE id LIKE ? ESCAPE '\\' LIMIT 6"
        ids = [r[0] for r in self._read(sql, (like,))]
        if len(ids) == 1 and prefix:
            return ids[0]
        if len(ids) > 1 and prefix:
            raise SessionError(f"{prefix!r} matches several sessions ({', '.join(ids[:5])}): "
                               "give more characters")
        raise SessionNotFound(prefix)

    def update_session(self, session_id: str, **fields) -> Session:
        """Change title, model, system_prompt or settings (merged into the current settings)."""
        allowed = ("title", "model", "system_prompt", "settings")
        unknown = [k for k in fields if k not in allowed]
        if unknown:
            raise SessionError(f"cannot update {', '.join(unknown)}: fields are {', '.join(allowed)}")
        current = self.get_session(session_id)
        if "settings" in fields:
            fields["settings"] = json.dumps(validate_settings(fields["settings"], base=current.settings))
        for key in ("title", "model", "system_prompt"):
            if key in fields:
                fields[key] = str(fields[key])
        sets = "".join(f"{k} = ?, " for k in fields)
        with self._tx() as c:
            cur = c.execute(f"UPDATE sessions SET {sets}updated_at = ? WHERE id = ?",
                            (*fields.values(), time.time(), session_id))
            if cur.rowcount == 0:
                raise SessionNotFound(session_id)
        return self.get_session(session_id)

    def delete_session(self, session_id: str) -> None:
        with self._tx() as c:
            if c.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                raise SessionNotFound(session_id)

    @staticmethod
    def _touch(c, session_id: str) -> float:
        """Mark `session_id` updated now inside transaction `c` (SessionNotFound when it is gone)."""
        now = time.time()
        if c.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id)).rowcount == 0:
            raise SessionNotFound(session_id)
        return now

    def _append(self, c, session_id, role, content, token_ids, status, stats, writer=None,
                created_at=None) -> int:
        """Insert the next message of `session_id` inside transaction `c`; returns its id."""
        now = self._touch(c, session_id)
        idx = c.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM messages WHERE session_id = ?",
                        (session_id,)).fetchone()[0]
        cur = c.execute(
            f"INSERT INTO messages ({_MESSAGE_COLS}, writer) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, idx, check_role(role), str(content), pack_ids(token_ids), check_status(status),
             json.dumps(check_stats(stats)), now if created_at is None else float(created_at), writer))
        return cur.lastrowid

    def add_message(self, session_id: str, role: str, content: str, token_ids=None, stats: dict | None = None,
                    status: str = "complete", created_at: float | None = None) -> Message:
        with self._tx() as c:
            mid = self._append(c, session_id, role, content, token_ids, status, stats, created_at=created_at)
        return self.get_message(mid)

    def begin_reply(self, session_id: str) -> Message:
        """Start an assistant reply as a "streaming" row owned by this process."""
        with self._tx() as c:
            mid = self._append(c, session_id, "assistant", "", (), "streaming", None, writer=this_writer())
        return self.get_message(mid)

    def update_reply(self, message_id: int, content: str, token_ids) -> None:
        """Save the reply so far (call it periodically while tokens stream in)."""
        blob = pack_ids(token_ids)
        with self._tx() as c:
            cur = c.execute("UPDATE messages SET content = ?, token_ids = ? "
                            "WHERE id = ? AND status = 'streaming'", (str(content), blob, message_id))
            if cur.rowcount == 0:
                raise SessionError(self._not_streaming(c, message_id))

    def finish_reply(self, message_id: int, content: str, token_ids, status: str = "complete",
                     stats: dict | None = None) -> Message:
        if check_status(status) == "streaming":
            raise SessionError("finish_reply needs a final status: complete, interrupted or error")
        blob, stats_json = pack_ids(token_ids), json.dumps(check_stats(stats))
        with self._tx() as c:
            cur = c.execute(
                "UPDATE messages SET content = ?, token_ids = ?, status = ?, stats = ?, writer = NULL "
                "WHERE id = ? AND status IN ('streaming', 'interrupted')",
                (str(content), blob, status, stats_json, message_id))
            if cur.rowcount == 0:
                raise SessionError(self._not_streaming(c, message_id))
            c.execute("UPDATE sessions SET updated_at = ? WHERE id = "
                      "(SELECT session_id FROM messages WHERE id = ?)", (time.time(), message_id))
        return self.get_message(message_id)

    @staticmethod
    def _not_streaming(c, message_id: int) -> str:
        row = c.execute("SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return f"no message {message_id}: it was deleted (or its session was)"
        return f"message {message_id} is {row[0]}, not a reply in progress; begin a new reply"

    def get_message(self, message_id: int) -> Message:
        rows = self._read(f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise SessionError(f"no message {message_id}")
        return message_from_row(rows[0])

    def messages(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Message]:
        """Messages offset, offset+1, ... in order, up to `limit` (an index range scan, fast at any size)."""
        if not isinstance(offset, int) or offset < 0:
            raise SessionError(f"offset must be a non-negative integer, got {offset!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise SessionError(f"limit must be a non-negative integer or None, got {limit!r}")
        rows = self._read(f"SELECT {_MESSAGE_COLS} FROM messages WHERE session_id = ? AND idx >= ? "
                          "ORDER BY idx LIMIT ?", (session_id, offset, -1 if limit is None else limit))
        if not rows and not self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)):
            raise SessionNotFound(session_id)
        return [message_from_row(r) for r in rows]

    def count_messages(self, session_id: str) -> int:
        self.get_session(session_id)
        return self._read("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,))[0][0]

    def truncate(self, session_id: str, idx: int) -> int:
        """Delete messages idx, idx+1, ... of a session (regenerate replaces a reply); returns how many."""
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise SessionError(f"message index must be a non-negative integer, got {idx!r}")
        with self._tx() as c:
            self._touch(c, session_id)
            cur = c.execute("DELETE FROM messages WHERE session_id = ? AND idx >= ?", (session_id, idx))
        return cur.rowcount

    def fork(self, session_id: str, at: int) -> Session:
        """A new session holding copies of messages 0..at (inclusive) of `session_id`."""
        src = self.get_session(session_id)
        with self._tx() as c:
            n = c.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)).fetchone()[0]
            if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < n:
                span = f"indexes 0..{n - 1}" if n else "it is empty"
                raise SessionError(f"cannot fork {session_id} at message {at!r}: "
                                   f"it has {n} messages ({span})")
            sid = self._insert_session(c, None, f"{src.title} (fork)", src.model, src.system_prompt,
                                       src.settings, parent_id=src.id, forked_at=at)
            c.execute(
                f"INSERT INTO messages ({_MESSAGE_COLS}) SELECT NULL, ?, idx, role, content, token_ids, "
                "CASE status WHEN 'streaming' THEN 'interrupted' ELSE status END, stats, created_at "
                "FROM messages WHERE session_id = ? AND idx <= ? ORDER BY idx", (sid, session_id, at))
            self._copy_alternatives(c, session_id, sid, at)
        return self.get_session(sid)

    def export(self, session_id: str, fmt: str = "json") -> str:
        if fmt not in ("json", "md"):
            raise SessionError(f"unknown export format {fmt!r}: use md or json")
        session, msgs, alts = self.get_session(session_id), self.messages(session_id), self.alternatives(session_id)
        return (transfer.to_json(session, msgs, alts) if fmt == "json"
                else transfer.to_markdown(session, msgs, alts))

    def import_json(self, text: str) -> Session:
        """Add the session of a JSON export (keeping its id unless taken) in one transaction."""
        data = transfer.parse_json(text)
        s = data["session"]
        with self._tx() as c:
            sid = self._insert_session(c, s["id"], s["title"], s["model"], s["system_prompt"], s["settings"],
                                       s["created_at"])
            for m in data["messages"]:
                mid = self._append(c, sid, m["role"], m["content"], m["token_ids"], m["status"], m["stats"],
                                   created_at=m["created_at"])
                for a in m["alternatives"]:
                    self._insert_alternative(c, mid, **a)
            updated = s["updated_at"] or time.time()
            c.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (updated, sid))
        return self.get_session(sid)
