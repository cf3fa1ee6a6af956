"""Fitting a conversation into the context window: drop the oldest turns, keep the system prompt.

Used for generate requests with `"history": "trim"` (the app sends it). Turns are dropped oldest first,
a user message together with the assistant reply that follows it, until the prompt fills at most
TRIM_FILL of the window: dropping a chunk at once keeps the remaining prefix the same for the next
several turns, so the prefix cache keeps hitting instead of missing on every turn after the first trim.
The newest message is never dropped; if it alone does not fit, the request fails as before.

Linear in the conversation: a ChatML prompt is the system block, one block per message and the reply
header, so each dropped message's size is learnt by rendering it alone, and the kept turns are rendered
once at the end (re-rendering the rest after every drop took 45 s for 10,000 short messages).
"""

from __future__ import annotations

TRIM_FILL = 0.75


def needs_room(prompt_len: int, limit: int, max_new_tokens: int) -> bool:
    """True when the prompt leaves fewer than min(max_new_tokens, limit // 4) tokens to reply in."""
    return prompt_len + min(max_new_tokens, limit // 4) > limit


def fit_messages(chat_ids, messages: list[dict], limit: int, max_new_tokens: int) -> tuple[list[int], int]:
    """(prompt ids, messages dropped). `chat_ids(messages)` renders a prompt."""
    ids = chat_ids(messages)
    if not needs_room(len(ids), limit, max_new_tokens):
        return ids, 0
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    body = messages[len(head):]
    size, empty = len(ids), len(chat_ids([]))
    dropped, target = 0, int(TRIM_FILL * limit)
    while len(body) - dropped > 1 and size > target:
        rest = body[dropped:dropped + 3]
        n = 2 if len(rest) > 2 and rest[0].get("role") == "user" and rest[1].get("role") == "assistant" else 1
        size -= sum(len(chat_ids([m])) - empty for m in rest[:n])
        dropped += n
    return (chat_ids(head + body[dropped:]) if dropped else ids), dropped
