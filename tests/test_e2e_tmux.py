"""End to end: the installed `qwen-chat` in a real terminal (tmux): it starts its engine in the
background, a message gets a reply and the status bar fills in; after quitting and starting again
the session is listed and its messages are back (the engine started the first time is reused)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from inference.client.stop import stop_server
from sessions import SessionStore

pytestmark = pytest.mark.timeout(180)


def _tmux() -> str:
    exe = shutil.which("tmux")
    if exe is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "tmux"], capture_output=True, timeout=300)
        exe = shutil.which("tmux")
    if exe is None:
        pytest.skip("tmux is not installed and could not be installed (apt-get install tmux)")
    return exe


class Terminal:
    """One tmux server on a private socket; `start` runs a command in a 120x36 window."""

    def __init__(self, tmux: str, sock: str, env: dict):
        self.tmux, self.sock, self.env = tmux, sock, env

    def cmd(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([self.tmux, "-S", self.sock, *args], capture_output=True, text=True,
                             env=self.env, timeout=30)
        if check and out.returncode:
            raise AssertionError(f"tmux {args}: {out.stderr}")
        return out.stdout

    def start(self, name: str, command: str) -> None:
        # the shell line reports the exit status, then waits so the last screen can be read
        self.cmd("new-session", "-d", "-s", name, "-x", "120", "-y", "36",
                 f"{command}; echo EXITED $?; sleep 60")

    def screen(self, name: str) -> str:
        return self.cmd("capture-pane", "-p", "-t", name, check=False)

    def wait(self, name: str, pattern: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name)
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the screen after {timeout}s:\n{text}")
            time.sleep(0.2)

    def keys(self, name: str, *keys: str) -> None:
        self.cmd("send-keys", "-t", name, *keys)


@pytest.fixture
def terminal(tmp_path):
    tmux = _tmux()
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}
    term = Terminal(tmux, str(tmp_path / "tmux.sock"), env)
    try:
        yield term
    finally:
        term.cmd("kill-server", check=False)
        for sock in run.glob("qwen-chat/*.sock"):  # the engine the app left running in the background
            stop_server(sock, timeout=20)


def test_chat_quit_and_resume_in_a_real_terminal(terminal, tiny_model, tmp_path):
    exe = shutil.which("qwen-chat")
    if exe is None:
        pytest.skip("qwen-chat is not installed (pip install -e .)")
    db = tmp_path / "sessions.db"
    with SessionStore(db) as store:  # a short reply keeps the test fast on a CPU
        store.create_session(title="New chat", settings={"max_new_tokens": 6})
    command = shlex.join([exe, "--model", str(tiny_model), "--device", "cpu", "--dtype", "float32",
                          "--db", str(db)])

    terminal.start("first", command)
    terminal.wait("first", r"· ready ·")
    terminal.keys("first", "Hello from tmux")
    terminal.keys("first", "Enter")
    # the status bar polls the KV figures every 2 s, so they can show before the message does: wait for the
    # message, the reply's footer and the status bar's TTFT and KV figures on one screen
    text = terminal.wait("first", r"(?s)(?=.*Hello from tmux)(?=.*\d+\.\d tok/s)(?=.*TTFT \d+ ms)"
                                  r"(?=.*KV \d+% \d+/\d+)")
    assert "You" in text and "Qwen" in text, text
    terminal.keys("first", "C-q")
    terminal.wait("first", r"EXITED 0")

    terminal.start("second", command)
    text = terminal.wait("second", r"Hello from tmux")
    terminal.wait("second", r"· ready ·", timeout=30)  # the engine from the first run is reused
    assert text.count("Hello from tmux") >= 2, text  # in the session list and in the conversation
    terminal.keys("second", "C-q")
    terminal.wait("second", r"EXITED 0")
    with SessionStore(db) as store:
        (session,) = store.list_sessions()
        msgs = store.messages(session.id)
    assert session.title == "Hello from tmux" and [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[1].status == "complete" and msgs[1].token_ids
