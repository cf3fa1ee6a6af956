"""Server lifecycle with real processes: the launcher starts a detached server, reuses it, refuses a
second one, reports a failed start; a killed server or rank gives clients an error within seconds;
a tp=2 server (torchrun) streams the tp=1 tokens; `qwen-chat stop` ends a server mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from inference.client import EngineClient
from inference.client.launcher import EngineStartError, ensure_server, probe
from inference.client.stop import stop_main
from tests.support.server import CPU_ARGS, start_server, stop_server, wait_ready

PROMPT = list(range(300, 340))


@pytest.fixture(scope="module")
def launched(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("launch")
    calls = []
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        path = ensure_server(str(tiny_model), device="cpu", dtype="float32", socket=d / "tiny.sock",
                             extra_args=("--num-kv-blocks", "256"), progress=lambda *a: calls.append(a),
                             timeout=90)
    yield SimpleNamespace(path=path, calls=calls, health=probe(path))
    if probe(path) is not None:
        stop_main(["--socket", str(path)])


def stream(path, n, into: list, **kw):
    with EngineClient(path) as c:
        for ev in c.generate(prompt_ids=PROMPT, max_new_tokens=n, ignore_eos=True, **kw):
            into.append((time.monotonic(), ev))


def tokens(events) -> list[int]:
    return [t for _, e in events if e["event"] == "token" for t in e["token_ids"]]


def test_ensure_server_starts_a_detached_server_logging_beside_its_socket(launched):
    h = launched.health
    assert h["status"] == "ready" and h["socket"] == str(launched.path)
    assert os.getsid(h["pid"]) == h["pid"] != os.getpid()  # its own session: outlives the app
    log = launched.path.with_name("tiny.log")
    assert h["log_file"] == str(log)
    text = log.read_text()
    assert "starting: " in text and "listening on" in text and "ready:" in text
    assert launched.calls[0] == (0, 0, "starting the engine server")


def test_ensure_server_reuses_a_live_server(launched, tiny_model):
    t0 = time.monotonic()
    again = ensure_server(str(tiny_model), socket=launched.path, progress=lambda *a: pytest.fail("restarted"))
    assert again == launched.path and time.monotonic() - t0 < 2.0
    assert probe(again)["pid"] == launched.health["pid"]


def test_a_second_server_on_a_live_socket_is_refused(launched, tiny_model):
    r = subprocess.run([sys.executable, "-m", "inference", "serve", "--model", str(tiny_model), *CPU_ARGS,
                        "--socket", str(launched.path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert f"pid {launched.health['pid']}) already owns {launched.path}" in r.stderr
    assert probe(launched.path)["pid"] == launched.health["pid"]


def test_a_failed_start_raises_with_the_log_lines(tmp_path):
    with pytest.raises(EngineStartError) as e:
        ensure_server(str(tmp_path / "no-such-model"), socket=tmp_path / "x.sock", timeout=60)
    assert "exited with code 2" in str(e.value) and "no such directory" in str(e.value)
    assert any("no such directory" in line for line in e.value.log_tail)


def test_killed_server_gives_the_client_an_error_within_seconds(tiny_model, tmp_path):
    sock, log = tmp_path / "k.sock", tmp_path / "k.log"
    proc = start_server(tiny_model, sock, log=log)
    try:
        wait_ready(sock, proc, log)
        events, killed = [], []
        with EngineClient(sock) as c:
            for ev in c.generate(prompt_ids=PROMPT, max_new_tokens=1000, ignore_eos=True):
                events.append(ev)
                if len(events) == 2:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(time.monotonic())
        assert events[-1]["event"] == "error" and events[-1]["code"] == "disconnected", events[-1]
        assert time.monotonic() - killed[0] < 5.0
    finally:
        stop_server(proc)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_tp2_server_streams_the_tp1_tokens_and_a_killed_rank_errors_clients(launched, tiny_model, tmp_path):
    want = []
    stream(launched.path, 16, want)
    sock, log = tmp_path / "tp2.sock", tmp_path / "tp2.log"
    proc = start_server(tiny_model, sock, "--tp", "2", log=log)
    try:
        h = wait_ready(sock, proc, log)
        assert h["tp"] == 2
        got = []
        stream(sock, 16, got)
        assert tokens(got) == tokens(want) and got[-1][1]["event"] == "done"
        rank0 = h["pid"]
        rank1 = [p for p in _children(proc.pid) if p != rank0]
        assert len(rank1) == 1, _children(proc.pid)
        events = []
        with EngineClient(sock) as c:
            for ev in c.generate(prompt_ids=PROMPT, max_new_tokens=1000, ignore_eos=True):
                events.append(ev)
                if len(events) == 2:
                    os.kill(rank1[0], signal.SIGKILL)
                    killed = time.monotonic()
        # the engine thread's collective fails (engine_error) or torchrun stops rank 0 (shutting_down)
        # or kills it (disconnected): never a hang
        assert events[-1]["event"] == "error", events[-1]
        assert events[-1]["code"] in ("engine_error", "shutting_down", "disconnected")
        assert time.monotonic() - killed < 15.0
        assert proc.wait(30) != 0
    finally:
        stop_server(proc)


def test_stop_ends_a_streaming_server(launched, capsys):
    events: list = []
    t = threading.Thread(target=stream, args=(launched.path, 1000, events))
    t.start()
    while not events:
        time.sleep(0.01)
    assert stop_main(["--socket", str(launched.path)]) == 0
    t.join(10)
    assert "stopped the engine server" in capsys.readouterr().out
    last = events[-1][1]
    assert last["event"] == "error" and last["code"] == "shutting_down", last
    assert not launched.path.exists() and probe(launched.path) is None
    stop_main(["--socket", str(launched.path)])
    assert "no engine server is running" in capsys.readouterr().out


def test_an_exited_unreaped_server_counts_as_stopped():
    """`qwen-chat stop` of a server the app started: it exits, but stays a zombie until the app reaps it;
    stop must not wait 30 s for it and then say it did not stop."""
    from inference.client.stop import _pid_alive

    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # not the launcher's: nobody reaps it
    state = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and state.read_text().split(")")[-1].split()[0] != "Z":
        time.sleep(0.05)
    try:
        assert not _pid_alive(proc.pid)
    finally:
        proc.wait()
