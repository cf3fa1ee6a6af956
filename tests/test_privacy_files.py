"""Files of chats stay private (issue 32, items 5, 7, 8): no link planted at a lock or log path is followed,
a folder other users can write to is refused for the socket, and the sessions database, KV block files,
logs, locks and sockets are 0600 in 0700 folders whatever the umask. The attacker is another local user
(a second uid through setpriv); real servers, real SQLite, real files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from inference.client import launcher
from inference.client.paths import log_path
from inference.client.stop import stop_main
from inference.engine.kv_disk_store import KVDiskStore
from inference.errors import UserError
from inference.server.listen import claim_socket
from sessions import SessionError, SessionStore
from tests.support.chats import make_chat
from tests.support.privacy import as_other, folder, mode, need_second_uid, other_can_read, umask

UMASKS = [0o022, 0o000]


def second_uid() -> bool:
    try:
        need_second_uid()
    except pytest.skip.Exception:
        return False
    return True


def victim_file(d, name="secret.txt"):
    p = d / name
    p.write_text("the victim's own file\n")
    os.chmod(p, 0o644)
    return p


def unchanged(p) -> bool:
    return p.read_text() == "the victim's own file\n" and mode(p) == 0o644


# --- 32.5: links planted by another user --------------------------------------------------------------
@pytest.mark.parametrize("shared_mode", [0o1777, 0o777])
def test_serve_refuses_a_shared_socket_folder_where_links_were_planted(tiny_model, tmp_path, shared_mode):
    need_second_uid()
    lock_victim, log_victim = victim_file(tmp_path, "a.txt"), victim_file(tmp_path, "b.txt")
    with folder(shared_mode) as shared:
        for link, target in (("x.sock.lock", lock_victim), ("x.log", log_victim)):
            subprocess.run(as_other("ln", "-s", str(target), str(shared / link)), check=True, cwd="/")
        r = subprocess.run([sys.executable, "-m", "inference", "serve", "--model", str(tiny_model), "--device", "cpu",
                            "--socket", str(shared / "x.sock"), "--log-file", str(shared / "x.log")],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "writable by every user" in r.stderr and "--socket" in r.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["x.log", "x.sock.lock"]  # nothing of ours there
    assert unchanged(lock_victim) and unchanged(log_victim)


def test_ensure_server_refuses_a_shared_folder_before_writing_anything(tiny_model, tmp_path):
    need_second_uid()
    log_victim = victim_file(tmp_path)
    with folder(0o1777) as shared:
        subprocess.run(as_other("ln", "-s", str(log_victim), str(shared / "x.log")), check=True, cwd="/")
        try:
            with pytest.raises(UserError, match="writable by every user"):
                launcher.ensure_server(str(tiny_model), device="cpu", socket=shared / "x.sock", timeout=30)
        finally:
            for proc in launcher.spawned.values():  # before the fix a server started there
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
        assert [p.name for p in shared.iterdir()] == ["x.log"]
    assert unchanged(log_victim)  # not appended to, not chmod'ed to 0600


def test_links_at_the_lock_and_log_paths_are_not_followed_in_a_private_folder(tiny_model, tmp_path):
    lock_victim, log_victim = victim_file(tmp_path, "a.txt"), victim_file(tmp_path, "b.txt")
    (tmp_path / "x.sock.lock").symlink_to(lock_victim)
    (tmp_path / "x.log").symlink_to(log_victim)
    with pytest.raises(UserError, match="x.sock.lock is a symbolic link"):
        claim_socket(tmp_path / "x.sock", private_dir=False)
    with pytest.raises(UserError, match="x.log is a symbolic link"):
        launcher.spawn_server(["true"], tmp_path / "x.log")
    r = subprocess.run([sys.executable, "-m", "inference", "serve", "--model", str(tiny_model), "--device", "cpu",
                        "--socket", str(tmp_path / "y.sock"), "--log-file", str(tmp_path / "x.log")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "x.log is a symbolic link" in r.stderr, r.stderr
    assert unchanged(lock_victim) and unchanged(log_victim)
    assert not (tmp_path / "x.sock").exists() and not (tmp_path / "y.sock").exists()


# --- 32.7: the sessions database -------------------------------------------------------------------------
@pytest.mark.parametrize("mask", UMASKS)
def test_sessions_database_is_private_whatever_the_umask(monkeypatch, mask):
    with folder(0o755) as home, umask(mask):
        os.mkdir(home / "share", 0o755)
        monkeypatch.setenv("XDG_DATA_HOME", str(home / "share"))
        monkeypatch.delenv("QWEN_CHAT_SESSIONS_DB", raising=False)
        store = SessionStore()
        make_chat(store)
        db = home / "share" / "qwen-chat" / "sessions.db"
        assert store.path == db
        assert mode(db.parent) == 0o700
        assert {p.name: mode(p) for p in db.parent.iterdir()} == {
            "sessions.db": 0o600, "sessions.db-wal": 0o600, "sessions.db-shm": 0o600}
        if second_uid():
            assert not other_can_read(db) and not other_can_read(db.parent)
        store.close()


def test_existing_sessions_files_are_tightened_and_links_refused(monkeypatch, tmp_path):
    data = tmp_path / "share" / "qwen-chat"
    with umask(0o022):
        data.mkdir(parents=True)
        conn = sqlite3.connect(data / "sessions.db")  # as an older version left it: 0644 in 0755
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE notes (x)")
        assert mode(data / "sessions.db") == mode(data / "sessions.db-wal") == 0o644
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
        monkeypatch.delenv("QWEN_CHAT_SESSIONS_DB", raising=False)
        store = SessionStore()
        assert mode(data) == 0o700 and mode(data / "sessions.db") == 0o600
        assert mode(data / "sessions.db-wal") == 0o600 and mode(data / "sessions.db-shm") == 0o600
        store.close()
        conn.close()
    (tmp_path / "link.db").symlink_to(data / "sessions.db")
    with pytest.raises(SessionError, match="symbolic link"):
        SessionStore(tmp_path / "link.db")
    with folder(0o1777) as shared, pytest.raises(SessionError, match="writable by other users"):
        SessionStore(shared / "s.db")


# --- 32.7: KV block files --------------------------------------------------------------------------------
def _block():
    shape = (2, 16, 4, 16)
    return bytes(range(16)), torch.randn(shape), torch.randn(shape)


@pytest.mark.parametrize("mask", UMASKS)
def test_kv_block_files_are_private_whatever_the_umask(mask):
    h, k, v = _block()
    with folder(0o755) as home, umask(mask):
        store = KVDiskStore(home / "cache" / "kv", "key", 1.0)
        store.put(h, k, v)
        store.drain()
        store.close()
        f = store.path(h)
        assert f.is_file() and mode(f) == 0o600
        for d in (home / "cache", home / "cache" / "kv", home / "cache" / "kv" / "key", f.parent):
            assert mode(d) == 0o700, d
        if second_uid():
            os.chmod(home / "cache", 0o755)  # even through an open parent folder
            os.chmod(home / "cache" / "kv", 0o755)
            assert not other_can_read(f) and not other_can_read(f.parent)


def test_existing_kv_folders_and_files_are_tightened(tmp_path):
    h, k, v = _block()
    with umask(0o022):
        store = KVDiskStore(tmp_path / "kv", "key", 1.0)
        store.put(h, k, v)
        store.close()
        f = store.path(h)
        os.chmod(f, 0o644)
        os.chmod(f.parent, 0o755)
        os.chmod(f.parent.parent, 0o755)
        again = KVDiskStore(tmp_path / "kv", "key", 1.0)
        assert again.contains(h)
        again.close()
    assert mode(f) == 0o600 and mode(f.parent) == 0o700 and mode(f.parent.parent) == 0o700


# --- 32.7 + 32.8: a real server in the fallback folder: socket, lock, log, KV files ---------------------
@pytest.mark.parametrize("mask", UMASKS)
def test_server_files_are_private_in_the_fallback_folder(tiny_model, monkeypatch, mask):
    with folder(0o755) as home:
        monkeypatch.setenv("HOME", str(home))
        for var in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        run = home / ".cache" / "qwen-chat"
        with umask(0o022):
            run.mkdir(parents=True)  # as the demo build leaves it: 0755
        path = None
        try:
            with umask(mask):
                path = launcher.ensure_server(str(tiny_model), device="cpu", dtype="float32",
                                              extra_args=("--num-kv-blocks", "64"), timeout=120)
                from inference.client import EngineClient

                with EngineClient(path) as c:
                    events = list(c.generate(prompt_ids=list(range(300, 340)), max_new_tokens=2))
            assert events[-1]["event"] == "done", events[-1]
            assert path.parent == run and mode(run) == 0o700
            for f in (path, log_path(path), path.with_name(path.name + ".lock")):
                assert mode(f) == 0o600, f
            kv = run / "kv"
            deadline = time.monotonic() + 30
            while not list(kv.rglob("*.safetensors")) and time.monotonic() < deadline:
                time.sleep(0.2)
            files = list(kv.rglob("*.safetensors"))
            assert files and {mode(f) for f in files} == {0o600}
            assert {mode(d) for d in (kv, *(p for p in kv.rglob("*") if p.is_dir()))} == {0o700}
            if second_uid():
                os.chmod(run, 0o755)  # even with the folder opened up, nothing inside is readable
                assert not any(other_can_read(f) for f in (log_path(path), files[0]))
                os.chmod(run, 0o700)
        finally:
            if path is not None:
                stop_main(["--socket", str(path)])


@pytest.mark.parametrize("mask", UMASKS)
def test_an_exported_chat_is_private_even_in_a_shared_folder(tmp_path, mask):
    from sessions.cli import main as sessions_main

    db = tmp_path / "s.db"
    with SessionStore(db) as store:
        sid = make_chat(store).id
    with folder(0o1777) as shared, umask(mask):
        out = shared / "chat.md"
        assert sessions_main(["--db", str(db), "export", sid, "--format", "md", "--out", str(out)]) == 0
        assert "answer 1" in out.read_text() and mode(out) == 0o600
        assert [p.name for p in shared.iterdir()] == ["chat.md"]  # no temp file left behind
        if second_uid():
            assert not other_can_read(out)
