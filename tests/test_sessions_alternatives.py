"""Alternative replies (the compare view's pairs) on real SQLite files: an old database migrates, a pick
swaps the pair, fork / regenerate / recovery keep them consistent, export, import and `sessions show`
carry them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sessions import schema
from sessions.cli import main as sessions_main
from sessions.prompt import build_messages
from sessions.records import SessionError
from sessions.store import SessionStore

A, B = "A: demo on cpu, float32, no quant, tp 1", "B: demo on cpu, float32, w8a16, tp 1"


def _pair(st: SessionStore, question: str = "hi") -> tuple:
    s = st.create_session(model="demo")
    st.add_message(s.id, "user", question, [1, 2])
    reply = st.begin_reply(s.id)
    alt = st.begin_alternative(reply.id, B, A)
    st.update_alternative(alt.id, "bee", [7])
    reply = st.finish_reply(reply.id, "ay ay", [5, 6], stats={"completion_tokens": 2, "decode_tok_s": 9.0})
    alt = st.finish_alternative(alt.id, "bee bee", [5, 8], stats={"completion_tokens": 2})
    alt = st.set_comparison(alt.id, 1, 0.5)
    return s, reply, alt


def test_a_version_1_database_migrates_and_keeps_its_chats(tmp_path):
    path = tmp_path / "old.db"
    conn = schema.connect(path)
    schema.migrate(conn, schema.MIGRATIONS[:1])  # a database written before alternatives existed
    conn.execute("INSERT INTO sessions (id, title, created_at, updated_at) VALUES ('s1', 'old', 1, 1)")
    conn.execute("INSERT INTO messages (session_id, idx, role, content, created_at) "
                 "VALUES ('s1', 0, 'user', 'hello', 1), ('s1', 1, 'assistant', 'hi there', 1)")
    conn.close()
    with SessionStore(path) as st:
        assert schema.user_version(st._conn) == 2
        assert [m.content for m in st.messages("s1")] == ["hello", "hi there"]
        assert st.alternatives("s1") == {}
        alt = st.add_alternative(st.messages("s1")[1].id, B, A, "other", [3], first_diff=0, agreement=0.0)
        assert st.alternatives("s1") == {alt.message_id: [alt]}


def test_a_pair_is_stored_and_a_pick_swaps_it_so_the_next_prompt_holds_the_picked_reply(tmp_path):
    with SessionStore(tmp_path / "s.db") as st:
        s, reply, alt = _pair(st)
        assert (alt.content, alt.token_ids, alt.first_diff, alt.agreement) == ("bee bee", [5, 8], 1, 0.5)
        assert build_messages(s, st.messages(s.id))[-1]["token_ids"] == [5, 6]
        kept, other = st.pick_alternative(alt.id)
        assert (kept.id, kept.content, kept.token_ids, kept.stats) == (reply.id, "bee bee", [5, 8],
                                                                        {"completion_tokens": 2})
        assert (other.content, other.token_ids, other.engine, other.chosen_engine) == ("ay ay", [5, 6], A, B)
        assert (other.first_diff, other.agreement) == (1, 0.5)
        assert build_messages(s, st.messages(s.id))[-1] == {"role": "assistant", "content": "bee bee",
                                                             "token_ids": [5, 8]}
        st.pick_alternative(alt.id)  # and back
        assert st.messages(s.id)[-1].content == "ay ay"


def test_only_the_last_reply_can_be_switched_and_not_while_it_streams(tmp_path):
    with SessionStore(tmp_path / "s.db") as st:
        s, reply, alt = _pair(st)
        st.add_message(s.id, "user", "next")
        with pytest.raises(SessionError, match="only the chat's last reply.*fork"):
            st.pick_alternative(alt.id)
        r2 = st.begin_reply(s.id)
        alt2 = st.begin_alternative(r2.id, B, A)
        with pytest.raises(SessionError, match="still being written"):
            st.pick_alternative(alt2.id)
        with pytest.raises(SessionError, match="no reply"):
            st.begin_alternative(st.messages(s.id)[0].id, B)  # a user message has no alternatives


def test_regenerate_drops_the_pair_fork_copies_it_and_a_dead_writer_is_recovered(tmp_path):
    path = tmp_path / "s.db"
    with SessionStore(path) as st:
        s, reply, alt = _pair(st)
        fork = st.fork(s.id, 1)
        [copied] = st.alternatives(fork.id)[st.messages(fork.id)[1].id]
        assert (copied.content, copied.first_diff, copied.engine) == ("bee bee", 1, B)
        st.truncate(s.id, 1)
        assert st.alternatives(s.id) == {}
        r = st.begin_reply(s.id)
        a = st.begin_alternative(r.id, B)
        st._conn.execute("UPDATE alternatives SET writer = 'nohost:1' WHERE id = ?", (a.id,))
    with SessionStore(path) as st:
        assert st.get_alternative(a.id).status == "interrupted"
        assert st.alternatives(fork.id)  # the fork's copy is its own


def test_export_import_and_show_carry_the_pairs(tmp_path, capsys):
    db = tmp_path / "s.db"
    with SessionStore(db) as st:
        s, reply, alt = _pair(st)
        doc = json.loads(st.export(s.id, "json"))
        md = st.export(s.id, "md")
    assert doc["version"] == 2
    [pair] = doc["messages"][1]["alternatives"]
    assert pair["content"] == "bee bee" and pair["token_ids"] == [5, 8] and pair["engine"] == B
    assert (pair["first_diff"], pair["agreement"], pair["chosen_engine"]) == (1, 0.5, A)
    assert f"kept, {A}" in md and f"### Alternative (1) · {B}" in md
    assert "first difference at token 1, agreement 0.500" in md and "bee bee" in md
    with SessionStore(tmp_path / "other.db") as st:
        new = st.import_json(json.dumps(doc))
        [back] = st.alternatives(new.id)[st.messages(new.id)[1].id]
        assert (back.content, back.token_ids, back.first_diff, back.agreement) == ("bee bee", [5, 8], 1, 0.5)
    bad = json.loads(json.dumps(doc))
    bad["messages"][0]["alternatives"] = [pair]
    with SessionStore(tmp_path / "other.db") as st, pytest.raises(SessionError, match="only replies"):
        st.import_json(json.dumps(bad))
    assert sessions_main(["show", s.id, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "[1] alternative" in out and "bee bee" in out and "first difference at token 1" in out
    assert f"kept: {A}" in out
    assert sessions_main(["export", s.id, "--db", str(db)]) == 0
    assert "### Alternative (1)" in capsys.readouterr().out


def test_bad_comparison_values_are_refused(tmp_path):
    with SessionStore(tmp_path / "s.db") as st:
        _, _, alt = _pair(st)
        for fd, ag in ((-1, 0.5), (1, 1.5), (True, 0.5)):
            with pytest.raises(SessionError):
                st.set_comparison(alt.id, fd, ag)
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT first_diff, agreement FROM alternatives").fetchall() == [(1, 0.5)]
    conn.close()
