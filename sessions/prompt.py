"""Turn a stored session into the engine protocol's `messages` and sampling fields.

Stored token ids go out verbatim, so the next turn's prompt repeats earlier turns token for token
and the engine's prefix cache hits (no re-tokenization drift).
"""

from __future__ import annotations

from sessions.records import DEFAULT_SETTINGS, Message, Session


def build_messages(session: Session, messages: list[Message]) -> list[dict]:
    """Protocol messages `{"role", "content", "token_ids"?}` for the next turn.

    - the session's system prompt leads as a system message (none when it is empty);
    - "error" messages are skipped (they never reached the model's context);
    - "streaming" messages are skipped (a reply still being written is not history yet);
    - an "interrupted" reply is kept as stored, with its token ids, because the engine's KV
      cache holds exactly those tokens;
    - `token_ids` is present when stored ids exist (or the content is empty); otherwise the
      server tokenizes the content.
    """
    out: list[dict] = []
    if session.system_prompt:
        out.append({"role": "system", "content": session.system_prompt})
    for m in messages:
        if m.status in ("error", "streaming"):
            continue
        item = {"role": m.role, "content": m.content}
        if m.token_ids or not m.content:
            item["token_ids"] = list(m.token_ids)
        out.append(item)
    return out


def sampling_from(session: Session) -> dict:
    """The protocol's sampling fields (temperature, top_p, top_k, repetition_penalty, max_new_tokens)."""
    settings = {**DEFAULT_SETTINGS, **(session.settings or {})}
    return {key: settings[key] for key in DEFAULT_SETTINGS}
