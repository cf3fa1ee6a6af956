"""What the chat app needs from the sessions store beyond its public API (kept here, clearly apart).

`truncate_from` drops messages idx..end of a session (regenerate replaces the last reply). It uses
`SessionStore.truncate(session_id, idx)` when the store has one, else one SQL transaction.
"""

from __future__ import annotations


def truncate_from(store, session_id: str, idx: int) -> int:
    """Delete messages with index >= idx of `session_id`; returns how many went."""
    if hasattr(store, "truncate"):
        return store.truncate(session_id, idx)
    store.get_session(session_id)  # raises SessionNotFound
    with store._tx() as c:
        return c.execute("DELETE FROM messages WHERE session_id = ? AND idx >= ?", (session_id, idx)).rowcount
