"""Alternative replies: another engine's reply to the same prompt, kept beside the reply the chat goes
on from (the app's compare view). Stdlib only; mixed into `SessionStore`.

A pair is one `messages` row (the kept reply: the next turn's prompt holds it) and one `alternatives`
row. `pick_alternative` swaps the two in one transaction; it is allowed on the chat's last reply only,
since later turns were written after the kept one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sessions.records import (
    Message,
    SessionError,
    check_stats,
    check_status,
    pack_ids,
    this_writer,
    unpack_ids,
)

_ALT_COLS = ("id, message_id, engine, chosen_engine, content, token_ids, status, stats, first_diff, agreement, "
             "created_at")


@dataclass
class Alternative:
    id: int
    message_id: int  # the kept reply this one stands beside
    engine: str  # what wrote this reply ("B: demo on cpu, float32, w8a16, tp 1")
    chosen_engine: str  # what wrote the kept reply
    content: str
    token_ids: list[int] = field(default_factory=list)
    status: str = "complete"
    stats: dict = field(default_factory=dict)
    first_diff: int | None = None  # first token index where the two replies differ; None: identical/unknown
    agreement: float | None = None  # positions holding the same token / the longer reply's length
    created_at: float = 0.0


def alternative_from_row(row) -> Alternative:
    return Alternative(id=row[0], message_id=row[1], engine=row[2], chosen_engine=row[3], content=row[4],
                       token_ids=unpack_ids(row[5]), status=row[6], stats=json.loads(row[7]),
                       first_diff=row[8], agreement=row[9], created_at=row[10])


def _metrics(first_diff, agreement) -> tuple[int | None, float | None]:
    if first_diff is not None and (isinstance(first_diff, bool) or not isinstance(first_diff, int)
                                   or first_diff < 0):
        raise SessionError(f"first_diff must be a non-negative integer or None, got {first_diff!r}")
    if agreement is not None and (isinstance(agreement, bool) or not isinstance(agreement, (int, float))
                                  or not 0 <= agreement <= 1):
        raise SessionError(f"agreement must be a number in [0, 1] or None, got {agreement!r}")
    return first_diff, None if agreement is None else float(agreement)


class AlternativesMixin:
    """`SessionStore` methods for alternative replies (uses its `_tx` and `_read`)."""

    def add_alternative(self, message_id: int, engine: str = "", chosen_engine: str = "", content: str = "",
                        token_ids=None, status: str = "complete", stats: dict | None = None,
                        first_diff: int | None = None, agreement: float | None = None,
                        created_at: float | None = None, writer: str | None = None) -> Alternative:
        first_diff, agreement = _metrics(first_diff, agreement)
        with self._tx() as c:
            aid = self._insert_alternative(c, message_id, engine, chosen_engine, content, token_ids, status,
                                           stats, first_diff, agreement, created_at, writer)
        return self.get_alternative(aid)

    @staticmethod
    def _insert_alternative(c, message_id, engine, chosen_engine, content, token_ids, status, stats,
                            first_diff=None, agreement=None, created_at=None, writer=None) -> int:
        row = c.execute("SELECT role FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None or row[0] != "assistant":
            raise SessionError(f"no reply {message_id} to keep an alternative with")
        cur = c.execute(
            f"INSERT INTO alternatives ({_ALT_COLS}, writer) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, str(engine), str(chosen_engine), str(content), pack_ids(token_ids), check_status(status),
             json.dumps(check_stats(stats)), first_diff, agreement,
             time.time() if created_at is None else float(created_at), writer))
        return cur.lastrowid

    def begin_alternative(self, message_id: int, engine: str, chosen_engine: str = "") -> Alternative:
        """Start an alternative reply as a "streaming" row owned by this process."""
        return self.add_alternative(message_id, engine, chosen_engine, status="streaming", writer=this_writer())

    def update_alternative(self, alt_id: int, content: str, token_ids) -> None:
        with self._tx() as c:
            cur = c.execute("UPDATE alternatives SET content = ?, token_ids = ? WHERE id = ? AND status = "
                            "'streaming'", (str(content), pack_ids(token_ids), alt_id))
            if cur.rowcount == 0:
                raise SessionError(f"alternative {alt_id} is not a reply in progress")

    def finish_alternative(self, alt_id: int, content: str, token_ids, status: str = "complete",
                           stats: dict | None = None) -> Alternative:
        if check_status(status) == "streaming":
            raise SessionError("finish_alternative needs a final status: complete, interrupted or error")
        with self._tx() as c:
            cur = c.execute(
                "UPDATE alternatives SET content = ?, token_ids = ?, status = ?, stats = ?, writer = NULL "
                "WHERE id = ? AND status IN ('streaming', 'interrupted')",
                (str(content), pack_ids(token_ids), status, json.dumps(check_stats(stats)), alt_id))
            if cur.rowcount == 0:
                raise SessionError(f"alternative {alt_id} is not a reply in progress")
        return self.get_alternative(alt_id)

    def set_comparison(self, alt_id: int, first_diff: int | None, agreement: float | None) -> Alternative:
        """Record how the pair compares (first differing token index, token agreement)."""
        first_diff, agreement = _metrics(first_diff, agreement)
        with self._tx() as c:
            if c.execute("UPDATE alternatives SET first_diff = ?, agreement = ? WHERE id = ?",
                         (first_diff, agreement, alt_id)).rowcount == 0:
                raise SessionError(f"no alternative {alt_id}")
        return self.get_alternative(alt_id)

    def get_alternative(self, alt_id: int) -> Alternative:
        rows = self._read(f"SELECT {_ALT_COLS} FROM alternatives WHERE id = ?", (alt_id,))
        if not rows:
            raise SessionError(f"no alternative {alt_id}")
        return alternative_from_row(rows[0])

    def alternatives(self, session_id: str, first_idx: int = 0) -> dict[int, list[Alternative]]:
        """The alternatives of the session's replies from message index `first_idx` on, by message id."""
        rows = self._read(
            f"SELECT {', '.join('a.' + c.strip() for c in _ALT_COLS.split(','))} FROM alternatives a "
            "JOIN messages m ON m.id = a.message_id WHERE m.session_id = ? AND m.idx >= ? ORDER BY a.id",
            (session_id, first_idx))
        out: dict[int, list[Alternative]] = {}
        for r in rows:
            out.setdefault(r[1], []).append(alternative_from_row(r))
        return out

    def pick_alternative(self, alt_id: int) -> tuple[Message, Alternative]:
        """Keep the alternative as the chat's reply, and the reply it replaces as the alternative."""
        cols = "content, token_ids, status, stats"
        with self._tx() as c:
            alt = c.execute(f"SELECT message_id, engine, chosen_engine, {cols} FROM alternatives WHERE id = ?",
                            (alt_id,)).fetchone()
            if alt is None:
                raise SessionError(f"no alternative {alt_id}")
            msg = c.execute(f"SELECT session_id, idx, {cols} FROM messages WHERE id = ?", (alt[0],)).fetchone()
            last = c.execute("SELECT MAX(idx) FROM messages WHERE session_id = ?", (msg[0],)).fetchone()[0]
            if msg[1] != last:
                raise SessionError("only the chat's last reply can be switched (later turns followed the kept "
                                   "one): fork the chat at that reply, then pick there")
            if "streaming" in (alt[5], msg[4]):
                raise SessionError("a reply of this pair is still being written: wait for it or stop it")
            c.execute("UPDATE messages SET content = ?, token_ids = ?, status = ?, stats = ? WHERE id = ?",
                      (*alt[3:7], alt[0]))
            c.execute("UPDATE alternatives SET content = ?, token_ids = ?, status = ?, stats = ?, engine = ?, "
                      "chosen_engine = ? WHERE id = ?", (*msg[2:6], alt[2], alt[1], alt_id))
            self._touch(c, msg[0])
        return self.get_message(alt[0]), self.get_alternative(alt_id)

    @staticmethod
    def _copy_alternatives(c, src: str, dst: str, last_idx: int) -> None:
        """Inside a fork's transaction: the alternatives of src's messages 0..last_idx, onto dst's copies."""
        c.execute(
            f"INSERT INTO alternatives ({_ALT_COLS}) SELECT NULL, n.id, a.engine, a.chosen_engine, a.content, "
            "a.token_ids, CASE a.status WHEN 'streaming' THEN 'interrupted' ELSE a.status END, a.stats, "
            "a.first_diff, a.agreement, a.created_at FROM alternatives a JOIN messages o ON o.id = a.message_id "
            "JOIN messages n ON n.session_id = ? AND n.idx = o.idx WHERE o.session_id = ? AND o.idx <= ? "
            "ORDER BY a.id", (dst, src, last_idx))
