"""Helpers for the sessions tests (this module holds no tests)."""

from __future__ import annotations


def make_chat(store, turns=2, **kw):
    """A session with `turns` user/assistant exchanges with token ids and stats."""
    s = store.create_session(title="chat", model="demo", **kw)
    for t in range(turns):
        store.add_message(s.id, "user", f"question {t}", [100 + t, 101 + t])
        store.add_message(s.id, "assistant", f"answer {t}", [200 + t], stats={"ttft_ms": 5.0 + t})
    return s
