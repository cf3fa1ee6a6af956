"""Helpers shared by the engine-server tests (this module holds no tests): start a real
`python -m inference serve` process, wait for it, talk raw protocol lines to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from inference.client.launcher import probe

CPU_ARGS = ("--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "256")


def start_server(model, sock: Path | None, *extra: str, env: dict | None = None, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "inference", "serve", "--model", str(model), *CPU_ARGS, *extra]
    if sock is not None:
        cmd += ["--socket", str(sock)]
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    finally:
        out.close()


def wait_ready(sock: Path, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        health = probe(sock, timeout=2.0) if sock.exists() else None
        if health and health["status"] == "ready":
            return health
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


class RawConn:
    """A plain socket speaking raw lines, to send what a well-behaved client never would."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes | dict) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n")

    def event(self, timeout: float = 10.0) -> dict:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def until(self, pred, timeout: float = 10.0) -> list[dict]:
        """Events up to and including the first one matching `pred`."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(max(0.1, deadline - time.monotonic()))
            out.append(ev)
            if pred(ev):
                return out

    def close(self) -> None:
        self.sock.close()
