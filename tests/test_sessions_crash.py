"""A real process SIGKILLed mid-reply: earlier turns survive, the partial reply is kept as interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sessions.prompt import build_messages
from sessions.store import SessionStore

ROOT = Path(__file__).resolve().parents[1]

WRITER = r"""
import sys, time
from sessions.store import SessionStore
st = SessionStore(sys.argv[1])
s = st.create_session(title="crash", model="demo")
for t in range(3):
    st.add_message(s.id, "user", f"q{t}", [10 * t + 1, 10 * t + 2])
    r = st.begin_reply(s.id)
    st.update_reply(r.id, f"a{t}", [10 * t + 3])
    st.finish_reply(r.id, f"a{t}", [10 * t + 3], stats={"ttft_ms": 1.0})
r = st.begin_reply(s.id)
print(s.id, r.id, flush=True)
i = 0
while True:  # stream forever: the parent kills us
    i += 1
    st.update_reply(r.id, "tok " * i, list(range(1000, 1000 + i)))
    print(i, flush=True)
    time.sleep(0.002)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_writer_keeps_turns_and_marks_reply_interrupted(tmp_path):
    db = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    try:
        sid, rid = proc.stdout.readline().split()
        rid = int(rid)
        deadline = time.monotonic() + 15
        while int(proc.stdout.readline()) < 30:
            assert time.monotonic() < deadline and proc.poll() is None, "writer stopped early"
        # while the writer lives, another store (e.g. `qwen-chat sessions list`) leaves its reply alone
        with SessionStore(db) as peek:
            assert peek.recovered == 0
            assert peek.get_message(rid).status == "streaming"
        os.kill(proc.pid, signal.SIGKILL)
        if hasattr(os, "waitid"):  # dead but not yet reaped (a zombie) already counts as gone
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            with SessionStore(db) as early:
                assert early.recovered == 1 and early.get_message(rid).status == "interrupted"
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with SessionStore(db) as st:
        assert st.recovered == (0 if hasattr(os, "waitid") else 1)
        msgs = st.messages(sid)
        assert len(msgs) == 7
        assert [(m.role, m.content, m.token_ids, m.status) for m in msgs[:6]] == [
            x for t in range(3) for x in (("user", f"q{t}", [10 * t + 1, 10 * t + 2], "complete"),
                                          ("assistant", f"a{t}", [10 * t + 3], "complete"))]
        partial = msgs[6]
        assert partial.id == rid and partial.status == "interrupted"
        n = len(partial.token_ids)
        assert n >= 30  # the updates acknowledged before the kill are there ...
        assert partial.content == "tok " * n and partial.token_ids == list(range(1000, 1000 + n))  # ... whole
        # the next prompt keeps the interrupted reply token for token
        prompt = build_messages(st.get_session(sid), msgs)
        assert prompt[-1] == {"role": "assistant", "content": "tok " * n, "token_ids": partial.token_ids}
        st.add_message(sid, "user", "go on")  # the session continues normally
    with SessionStore(db) as st:
        assert st.recovered == 0 and st.count_messages(sid) == 8
