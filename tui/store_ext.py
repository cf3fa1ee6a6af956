"""What the chat app needs from the sessions store beyond its public API (kept here, clearly apart).

`truncate_from` drops messages idx..end of a session (regenerate replaces the last reply). It uses
`SessionStore.truncate(session_id, idx)` when the store has one, else one SQL transaction.
`new_chat` gives the chat that `--new` and ctrl+n open: an empty one is reused, never piled up.
"""

from __future__ import annotations

from sessions.records import DEFAULT_SETTINGS, DEFAULT_TITLE

# The demo model has random weights: its replies never end early, so each would run to the Qwen default
# of 512 tokens (a minute or two on a CPU). A new demo chat shows the whole pipeline in seconds instead;
# the chat's settings (ctrl+s) change it.
DEMO_MAX_NEW_TOKENS = 64


def truncate_from(store, session_id: str, idx: int) -> int:
    """Delete messages with index >= idx of `session_id`; returns how many went."""
    if hasattr(store, "truncate"):
        return store.truncate(session_id, idx)
    store.get_session(session_id)  # raises SessionNotFound
    with store._tx() as c:
        return c.execute("DELETE FROM messages WHERE session_id = ? AND idx >= ?", (session_id, idx)).rowcount


def new_chat_settings(model: str) -> dict:
    """The settings of a new chat on `model`: the Qwen chat defaults, with short replies on the demo."""
    settings = dict(DEFAULT_SETTINGS)
    if model == "demo":
        settings["max_new_tokens"] = DEMO_MAX_NEW_TOKENS
    return settings


def new_chat(store, model: str) -> str:
    """The id of an empty chat on `model`: the newest untitled one without messages (made the latest),
    else a new one with `new_chat_settings(model)`."""
    rows = store._read(
        "SELECT id FROM sessions s WHERE title = ? AND model = ? AND NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY updated_at DESC, rowid DESC LIMIT 1",
        (DEFAULT_TITLE, model))
    if rows:
        return store.update_session(rows[0][0]).id  # touched: it is the latest chat now
    return store.create_session(model=model, settings=new_chat_settings(model)).id
