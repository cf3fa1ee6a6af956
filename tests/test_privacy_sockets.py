"""Socket squatting (issue 32, item 6): another local user listening at the socket path first must get
nothing. The clients (sync and async), the launcher, the app and `qwen-chat stop` check the socket's folder, the
socket's owner and the listening process's uid (SO_PEERCRED) before sending a byte. The squatter runs
under a second uid (setpriv) and reports every byte it receives."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import pytest

from inference.client import AsyncEngineClient, EngineClient, UntrustedPeer, launcher
from inference.client.stop import stop_main
from inference.errors import UserError
from tests.support.privacy import SYSTEM_PYTHON, as_other, folder
from tui.engine_link import EngineLink, EngineOptions, StartFailed

SQUATTER = r"""
import os, socket, sys
if sys.argv[1] == "fd":  # a socket file the victim made, listened on by the other user
    s = socket.socket(fileno=int(sys.argv[2]))
else:
    s = socket.socket(socket.AF_UNIX)
    s.bind(sys.argv[2])
    os.chmod(sys.argv[2], 0o777)
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(1.0)
    got = b""
    try:
        while chunk := c.recv(65536):
            got += chunk
    except OSError:
        pass
    print("got", len(got), flush=True)
    c.close()
"""


class Squatter:
    """The other user's listener; `received()` stops it and returns the byte counts of its connections."""

    def __init__(self, *args: str, pass_fds=()):
        self.proc = subprocess.Popen(as_other(SYSTEM_PYTHON, "-I", "-c", SQUATTER, *args), pass_fds=pass_fds,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        line = self.proc.stdout.readline()
        assert line == "listening\n", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def received(self) -> list[int]:
        time.sleep(1.5)  # let it accept and read what is queued (it reads each connection for up to 1 s)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("got ")]


def _all_clients_refuse(path, match: str) -> None:
    with pytest.raises(UntrustedPeer, match=match):
        with EngineClient(path, timeout=2.0) as c:
            c.health()

    async def use_async():
        async with AsyncEngineClient(path, timeout=2.0) as c:
            await c.health()

    with pytest.raises(UntrustedPeer, match=match):
        asyncio.run(use_async())
    with pytest.raises(UntrustedPeer, match=match):
        launcher.probe(path, timeout=2.0)
    with pytest.raises(UserError, match=match):
        stop_main(["--socket", str(path), "--timeout", "2"])
    with pytest.raises(StartFailed, match=match):  # the app attaching with --socket
        EngineLink(EngineOptions(socket=str(path))).start()


def _refused_everywhere(tiny_model, path, squatter, match: str) -> list[int]:
    """Every client and the launcher refuse `path` with `match`; returns the bytes the squatter got per connection."""
    try:
        _all_clients_refuse(path, match)
        with pytest.raises(UserError, match=match):
            launcher.ensure_server(str(tiny_model), device="cpu", socket=path, timeout=10)
    finally:
        got = squatter.received()
    return got


def test_a_squatter_in_a_shared_folder_gets_nothing(tiny_model):
    with folder(0o1777) as shared:
        path = shared / "x.sock"
        got = _refused_everywhere(tiny_model, path, Squatter("path", str(path)), "writable by every user")
        assert sum(got) == 0, got


def test_a_listener_running_as_another_user_gets_nothing(tiny_model, tmp_path):
    """The folder and the socket file are the victim's; only the process listening is not."""
    path = tmp_path / "x.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    os.chmod(path, 0o600)
    try:
        squatter = Squatter("fd", str(s.fileno()), pass_fds=(s.fileno(),))
    finally:
        s.close()
    got = _refused_everywhere(tiny_model, path, squatter, "runs as uid 65534, not as you")
    assert got and sum(got) == 0, got  # connections were made, not a byte was sent


def test_a_socket_file_of_another_user_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("giving the socket file to another user (chown) needs root")
    path = tmp_path / "x.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    try:
        os.chown(path, 65534, 65534)
        with pytest.raises(UntrustedPeer, match="belongs to uid 65534"):
            EngineClient(path, timeout=2.0)
    finally:
        s.close()
