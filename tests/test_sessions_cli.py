"""`qwen-chat sessions ...` through `sessions.cli.main`, on a real database file."""

from __future__ import annotations

import json

import pytest

from sessions.cli import main
from sessions.store import SessionStore


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "cli.db"
    with SessionStore(path) as st:
        s = st.create_session(title="Sorting in Python", model="qwen-7b")
        st.add_message(s.id, "user", "how do I sort?", [1, 2, 3])
        st.add_message(s.id, "assistant", "use sorted()", [4, 5], stats={"decode_tok_s": 42.0,
                                                                          "completion_tokens": 2})
        st.add_message(s.id, "user", "and reverse?", [6])
        st.add_message(s.id, "assistant", "reverse=True", [7])
        other = st.create_session(title="Weather")
        st.add_message(other.id, "user", "rain tomorrow?")
    return path, s.id, other.id


def test_list_and_search(db, capsys):
    path, sid, oid = db
    assert main(["--db", str(path), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "UPDATED", "MSGS", "MODEL", "TITLE"]
    assert out[1].startswith(oid) and out[2].startswith(sid) and " 4  qwen-7b" in out[2]
    assert main(["list", "--db", str(path), "--search", "REVERSE"]) == 0  # --db after the command too
    out = capsys.readouterr().out
    assert sid in out and oid not in out
    assert main(["--db", str(path), "list", "-s", "zzz"]) == 0
    assert "no sessions match 'zzz'" in capsys.readouterr().out


def test_show_by_prefix(db, capsys):
    path, sid, _ = db
    assert main(["--db", str(path), "show", sid[:6]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Sorting in Python")
    assert "[1] assistant  [2 tokens, 42.0 tok/s]\nuse sorted()" in out
    assert out.index("[0] user") < out.index("[3] assistant")


def test_unknown_ambiguous_and_bad_usage(db, capsys):
    path, _, _ = db
    assert main(["--db", str(path), "show", "nope"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: no session 'nope': `qwen-chat sessions list` shows the ids"
    with SessionStore(path) as st:  # two ids sharing a prefix (an import keeps a free id)
        for sid in ("abc1", "abc2"):
            st.import_json(json.dumps({"format": "qwen-chat-session", "version": 1, "session": {"id": sid}}))
    assert main(["--db", str(path), "show", "abc"]) == 2
    assert "matches several sessions (abc1, abc2): give more characters" in capsys.readouterr().err
    assert main(["--db", str(path), "frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--db", str(path), "fork", "abc1"]) == 2  # --at is required
    assert "--at" in capsys.readouterr().err
    assert main(["--db", str(path), "export", "abc1", "--format", "pdf"]) == 2
    capsys.readouterr()
    bad = path.parent / "junk.db"
    bad.write_bytes(b"garbage" * 200)
    assert main(["--db", str(bad), "list"]) == 2
    assert "not a qwen-chat sessions database" in capsys.readouterr().err


def test_export_import_round_trip_via_files(db, tmp_path, capsys):
    path, sid, _ = db
    out = tmp_path / "s.json"
    assert main(["--db", str(path), "export", sid, "--format", "json", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    other = tmp_path / "other.db"
    assert main(["--db", str(other), "import", str(out)]) == 0
    assert f"imported session {sid} ('Sorting in Python', 4 messages)" in capsys.readouterr().out
    with SessionStore(path) as a, SessionStore(other) as b:
        key = lambda m: (m.role, m.content, m.token_ids, m.status, m.stats)
        assert [key(m) for m in a.messages(sid)] == [key(m) for m in b.messages(sid)]
    assert main(["--db", str(path), "export", sid, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Sorting in Python") and "## Assistant (3)\n\nreverse=True" in md
    assert main(["--db", str(path), "export", sid, "--out", str(tmp_path / "no" / "dir.md")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--db", str(path), "import", str(tmp_path / "missing.json")]) == 2
    assert "no file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"format": "nope"}))
    assert main(["--db", str(path), "import", str(tmp_path / "bad.json")]) == 2
    assert "not a qwen-chat session export" in capsys.readouterr().err


def test_the_reason_of_a_failed_reply_is_kept_shown_exported_and_imported(db, tmp_path, capsys):
    path, sid, _ = db
    reason = "the prompt has 300 tokens; this engine holds at most 256 per sequence: shorten it"
    with SessionStore(path) as st:
        reply = st.begin_reply(sid)
        st.finish_reply(reply.id, "", [], status="error", stats={"error": reason})
        with pytest.raises(ValueError, match="must be a text"):
            st.add_message(sid, "assistant", "x", stats={"error": 1})
    assert main(["--db", str(path), "show", sid]) == 0
    assert f"[4] assistant (error)\n\n(error: {reason})" in capsys.readouterr().out
    assert main(["--db", str(path), "export", sid, "--format", "md"]) == 0
    assert f"_(error: {reason})_" in capsys.readouterr().out
    out = tmp_path / "s.json"
    assert main(["--db", str(path), "export", sid, "--format", "json", "--out", str(out)]) == 0
    assert main(["--db", str(tmp_path / "other.db"), "import", str(out)]) == 0
    with SessionStore(tmp_path / "other.db") as st:
        assert st.messages(sid)[-1].stats == {"error": reason}


def test_fork(db, capsys):
    path, sid, _ = db
    assert main(["--db", str(path), "fork", sid, "--at", "4"]) == 2
    assert "has 4 messages (indexes 0..3)" in capsys.readouterr().err
    assert main(["--db", str(path), "fork", sid, "--at", "1"]) == 0
    new_id = capsys.readouterr().out.split("-> ")[1].split()[0]
    with SessionStore(path) as st:
        assert [m.content for m in st.messages(new_id)] == ["how do I sort?", "use sorted()"]
        assert st.get_session(new_id).title == "Sorting in Python (fork)"


def test_delete_needs_confirmation(db, capsys, monkeypatch):
    path, sid, oid = db
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["--db", str(path), "delete", sid]) == 2
    assert "pass --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["--db", str(path), "delete", sid]) == 1
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["--db", str(path), "delete", sid]) == 0
    assert main(["--db", str(path), "delete", oid, "--yes"]) == 0
    assert main(["--db", str(path), "delete", oid, "--yes"]) == 2
    capsys.readouterr()
    with SessionStore(path) as st:
        assert st.list_sessions() == []
