"""Export (JSON round trip with token ids, Markdown) and import validation, on real SQLite files."""

from __future__ import annotations

import json

import pytest

from sessions.records import SessionError
from sessions.store import SessionStore
from tests.support.chats import make_chat as _chat


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "s.db") as s:
        yield s


def test_export_import_round_trip(tmp_path, store):
    s = _chat(store, turns=2, system_prompt="sys", settings={"max_new_tokens": 64})
    r = store.begin_reply(s.id)
    store.finish_reply(r.id, "cut", [7, 8], status="interrupted")
    text = store.export(s.id, fmt="json")
    doc = json.loads(text)
    assert doc["messages"][4]["token_ids"] == [7, 8] and doc["messages"][4]["status"] == "interrupted"
    with SessionStore(tmp_path / "other.db") as other:
        t = other.import_json(text)
        assert t.id == s.id  # id kept when free
        src = store.get_session(s.id)
        for field in ("title", "model", "system_prompt", "settings", "created_at", "updated_at"):
            assert getattr(t, field) == getattr(src, field), field
        key = lambda m: (m.idx, m.role, m.content, m.token_ids, m.status, m.stats, m.created_at)
        assert [key(m) for m in other.messages(t.id)] == [key(m) for m in store.messages(s.id)]
    again = store.import_json(text)  # same db: the id is taken, a new one is given
    assert again.id != s.id and store.count_messages(again.id) == 5
    md = store.export(s.id, fmt="md")
    assert md.startswith("# chat") and "## User (0)" in md and "question 1" in md and "_(interrupted)_" in md
    with pytest.raises(SessionError, match="unknown export format"):
        store.export(s.id, fmt="html")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a qwen-chat session export"),
    ('{"format": "qwen-chat-session", "version": 9, "session": {}}', "version 9 is not supported"),
    ('{"format": "qwen-chat-session", "version": 1, "session": {}, "messages": [{"role": "bot"}]}',
     "messages\\[0\\].role 'bot'"),
    ('{"format": "qwen-chat-session", "version": 1, "session": {},'
     ' "messages": [{"role": "user", "token_ids": [1, "2"]}]}', "token_ids must be a list"),
    ('{"format": "qwen-chat-session", "version": 1, "session": {"settings": {"top_k": -1}}}', "top_k"),
])
def test_import_rejects_bad_files_and_writes_nothing(store, text, match):
    with pytest.raises(SessionError, match=match):
        store.import_json(text)
    assert store.list_sessions() == []
