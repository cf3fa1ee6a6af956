"""SessionStore on real SQLite files: schema migrations, CRUD, ordering, search, fork, export/import."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from sessions import schema
from sessions.records import DEFAULT_SETTINGS, SessionError, SessionNotFound, pack_ids, title_from, unpack_ids
from sessions.store import SessionStore, default_db_path
from tests.support.chats import make_chat as _chat


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "s.db") as s:
        yield s


# -- schema -------------------------------------------------------------------------------------------
def test_migrations_from_empty_db_and_reopen_is_idempotent(tmp_path):
    path = tmp_path / "deep" / "dir" / "s.db"
    with SessionStore(path) as st:
        s = _chat(st, turns=1)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sessions", "messages"} <= tables
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE session_id = 'x' AND idx >= 5 ORDER BY idx LIMIT 3"))
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan
    conn.close()
    for _ in range(2):  # re-open: nothing re-applied, data intact
        with SessionStore(path) as st:
            assert [m.content for m in st.messages(s.id)] == ["question 0", "answer 0"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    conn.close()


def test_version0_db_with_unrelated_data_is_migrated_and_kept(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    with SessionStore(path) as st:
        _chat(st, turns=1)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    conn.close()


def test_failed_migration_rolls_back_and_says_what_to_do(tmp_path):
    path = tmp_path / "clash.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (x)")  # a foreign db whose table clashes with migration 1
    conn.commit()
    conn.close()
    with pytest.raises(SessionError, match="migration 1 failed.*another --db"):
        SessionStore(path)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"messages"} and conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


def test_migrations_apply_in_order_each_in_a_transaction(tmp_path):
    conn = schema.connect(tmp_path / "m.db")
    extra = [*schema.MIGRATIONS, ("ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",),
             ("CREATE TABLE tags (name TEXT)", "INSERT INTO nope VALUES (1)")]  # 3rd fails midway
    n = len(schema.MIGRATIONS)
    with pytest.raises(SessionError, match=f"migration {n + 2} failed"):
        schema.migrate(conn, extra)
    assert schema.user_version(conn) == n + 1
    cols = [r[1] for r in conn.execute("PRAGMA table_info(sessions)")]
    assert cols[-1] == "pinned"
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'tags'").fetchone() is None
    assert schema.migrate(conn, extra[:n + 1]) == n + 1  # nothing pending


def test_newer_or_foreign_files_get_clear_errors(tmp_path):
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SessionError, match="version 99, newer.*upgrade qwen-chat"):
        SessionStore(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(SessionError, match="not a qwen-chat sessions database"):
        SessionStore(junk)


def test_default_path_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_CHAT_SESSIONS_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "qwen-chat" / "sessions.db"
    with SessionStore() as st:
        st.create_session()
    assert (tmp_path / "xdg" / "qwen-chat" / "sessions.db").is_file()
    monkeypatch.setenv("QWEN_CHAT_SESSIONS_DB", str(tmp_path / "env.db"))
    assert default_db_path() == tmp_path / "env.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.delenv("QWEN_CHAT_SESSIONS_DB")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "qwen-chat" / "sessions.db"


# -- sessions and messages --------------------------------------------------------------------------
def test_crud_and_settings(store):
    s = store.create_session(title="t", model="7b", system_prompt="be brief", settings={"temperature": 0.2})
    assert s.settings == {**DEFAULT_SETTINGS, "temperature": 0.2}
    got = store.get_session(s.id)
    assert (got.title, got.model, got.system_prompt) == ("t", "7b", "be brief")
    up = store.update_session(s.id, title="renamed", settings={"top_k": 40})
    assert up.title == "renamed" and up.settings["top_k"] == 40 and up.settings["temperature"] == 0.2
    assert up.updated_at >= s.updated_at
    with pytest.raises(SessionError, match="unknown setting 'topp'"):
        store.update_session(s.id, settings={"topp": 0.5})
    with pytest.raises(SessionError, match="top_p must be in"):
        store.create_session(settings={"top_p": 0})
    with pytest.raises(SessionError, match="cannot update id"):
        store.update_session(s.id, id="x")
    m = store.add_message(s.id, "user", "héllo 你好", [1, 151643])
    assert (m.idx, m.status, m.token_ids) == (0, "complete", [1, 151643])
    with pytest.raises(SessionError, match="unknown role"):
        store.add_message(s.id, "robot", "x")
    with pytest.raises(SessionError, match="non-negative 32-bit"):
        store.add_message(s.id, "user", "x", [-1])
    assert store.count_messages(s.id) == 1  # failed calls wrote nothing
    store.delete_session(s.id)
    with pytest.raises(SessionNotFound, match="no session .*qwen-chat sessions list"):
        store.get_session(s.id)
    with pytest.raises(SessionNotFound):
        store.add_message(s.id, "user", "late")
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # cascade
    conn.close()


def test_reply_lifecycle(store):
    s = store.create_session()
    store.add_message(s.id, "user", "hi", [9])
    r = store.begin_reply(s.id)
    assert (r.idx, r.role, r.status, r.content) == (1, "assistant", "streaming", "")
    store.update_reply(r.id, "Hel", [11])
    assert store.get_message(r.id).token_ids == [11]
    done = store.finish_reply(r.id, "Hello", [11, 12], stats={"ttft_ms": 3.5, "completion_tokens": 2})
    assert (done.status, done.content, done.token_ids, done.stats["ttft_ms"]) == ("complete", "Hello",
                                                                                 [11, 12], 3.5)
    with pytest.raises(SessionError, match="is complete, not a reply in progress"):
        store.update_reply(r.id, "more", [1])
    with pytest.raises(SessionError, match="final status"):
        store.finish_reply(store.begin_reply(s.id).id, "", [], status="streaming")


def test_truncate_for_regenerate(store):
    s = _chat(store, turns=2)
    assert store.truncate(s.id, 3) == 1
    assert [m.content for m in store.messages(s.id)] == ["question 0", "answer 0", "question 1"]
    r = store.begin_reply(s.id)
    assert r.idx == 3  # the next message takes the freed index
    assert store.truncate(s.id, 10) == 0
    with pytest.raises(SessionError, match="non-negative integer"):
        store.truncate(s.id, -1)
    with pytest.raises(SessionNotFound):
        store.truncate("missing", 0)


def test_threads_share_one_store(store):
    s = store.create_session()

    def worker(k):
        for i in range(25):
            store.add_message(s.id, "user", f"{k}-{i}", [k, i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    msgs = store.messages(s.id)
    assert [m.idx for m in msgs] == list(range(100))
    assert sorted(m.content for m in msgs) == sorted(f"{k}-{i}" for k in range(4) for i in range(25))


def test_ordering_newest_first(store):
    a = store.create_session(title="a")
    b = store.create_session(title="b")
    c = store.create_session(title="c")
    assert [s.id for s in store.list_sessions()] == [c.id, b.id, a.id]
    time.sleep(0.002)
    store.add_message(a.id, "user", "bump")
    assert [s.id for s in store.list_sessions()] == [a.id, c.id, b.id]
    for i in range(5):
        store.add_message(b.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    assert [m.idx for m in store.messages(b.id)] == list(range(5))
    assert [m.content for m in store.messages(b.id, offset=2, limit=2)] == ["m2", "m3"]
    assert store.messages(b.id, offset=10) == []


def test_search_titles_and_content(store):
    a = store.create_session(title="Rust lifetimes")
    b = store.create_session(title="cooking")
    store.add_message(b.id, "user", "How long do I boil an EGG?")
    c = store.create_session(title="percent")
    store.add_message(c.id, "user", "100% sure_thing")
    assert [s.id for s in store.list_sessions(search="rust")] == [a.id]
    assert [s.id for s in store.list_sessions(search="egg")] == [b.id]
    assert [s.id for s in store.list_sessions(search="0% s")] == [c.id]
    assert [s.id for s in store.list_sessions(search="_")] == [c.id]  # LIKE wildcards are matched literally
    assert store.list_sessions(search="nothing like this") == []


def test_fork_shares_prefix_and_is_independent(store):
    s = _chat(store, turns=3)
    with pytest.raises(SessionError, match="has 6 messages \\(indexes 0..5\\)"):
        store.fork(s.id, at=6)
    with pytest.raises(SessionError, match="at message -1"):
        store.fork(s.id, at=-1)
    f = store.fork(s.id, at=2)
    assert (f.parent_id, f.forked_at, f.model, f.settings) == (s.id, 2, s.model, s.settings)
    orig, copy = store.messages(s.id), store.messages(f.id)
    assert [(m.idx, m.role, m.content, m.token_ids, m.stats) for m in copy] == \
        [(m.idx, m.role, m.content, m.token_ids, m.stats) for m in orig[:3]]
    store.add_message(f.id, "assistant", "different answer", [999])
    store.add_message(s.id, "user", "original goes on", [5])
    assert store.count_messages(f.id) == 4 and store.count_messages(s.id) == 7
    assert store.messages(f.id)[3].content == "different answer"
    assert store.messages(s.id)[3].content == "answer 1"
    store.delete_session(s.id)
    assert store.get_session(f.id).parent_id is None and store.count_messages(f.id) == 4


def test_lazy_loading_1000_messages(tmp_path):
    path = tmp_path / "big.db"
    with SessionStore(path) as st:
        s = st.create_session(title="long")
        for i in range(1000):
            st.add_message(s.id, "user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 200,
                           list(range(i, i + 300)))
        other = st.create_session(title="other")
        st.add_message(other.id, "user", "unrelated")
    t0 = time.perf_counter()
    with SessionStore(path) as st:
        n = st.count_messages(s.id)
        last = st.messages(s.id, offset=n - 50, limit=50)
        first = st.messages(s.id, limit=50)
    elapsed = time.perf_counter() - t0
    assert n == 1000 and [m.idx for m in last] == list(range(950, 1000))
    assert last[-1].token_ids == list(range(999, 1299)) and first[0].content.startswith("message 0 ")
    assert elapsed < 1.0, f"open + first pages took {elapsed:.3f}s"


def test_helpers():
    assert title_from("  \n  How do I sort a list in Python?\nmore") == "How do I sort a list in Python?"
    long = title_from("Please explain the difference between threads and processes in detail")
    assert long.endswith("…") and len(long) <= 41 and long.startswith("Please explain the difference")
    assert title_from("") == "New chat" and title_from("a" * 100) == "a" * 40 + "…"
    ids = [0, 1, 151643, 2**31 - 1]
    assert len(pack_ids(ids)) == 16 and unpack_ids(pack_ids(ids)) == ids and unpack_ids(b"") == []


def test_empty_chat_reuses_the_newest_empty_chat_of_the_model(store):
    old = store.empty_chat("7b", {"max_new_tokens": 64})
    assert store.get_session(old).settings["max_new_tokens"] == 64
    newer = store.create_session(model="7b").id
    other = store.empty_chat("14b")  # another model: a chat of its own
    assert store.empty_chat("7b") == newer != old and other not in (old, newer)
    assert store.list_sessions()[0].id == newer  # reused: it is the latest chat now
    store.add_message(newer, "user", "hi")
    assert store.empty_chat("7b") == old  # a chat with messages is never reused
