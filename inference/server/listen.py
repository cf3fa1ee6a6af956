"""Claim the socket path: private directory, one server per path, stale sockets replaced.

A `<socket>.lock` file held with `flock` for the server's lifetime makes "one server per path"
race-free (the kernel drops the lock when the process dies, however it dies). A socket file whose
owner is gone (nothing answers, the lock is free) is stale and removed.

The folder must be this user's and writable by no one else (a shared or sticky folder like /tmp is
refused: another user could plant a link at the lock or log path, or bind the socket first); the lock
file is opened without following links (`inference.private_files`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from inference import private_files
from inference.errors import UserError

log = logging.getLogger("inference.server")
MAX_SUN_PATH = 107  # bytes of a Unix socket path, without the trailing NUL


class AlreadyRunning(UserError):
    """A live server owns the path."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _owner_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
    except OSError:
        return "?"


def _already(path: Path, pid: str) -> AlreadyRunning:
    return AlreadyRunning(
        f"an engine server (pid {pid}) already owns {path}: use it (the app reuses it), "
        f"or stop it first with `qwen-chat stop --socket {path}`"
    )


def claim_socket(path: str | os.PathLike, private_dir: bool) -> tuple[socket.socket, int]:
    """Bind and listen on `path` with mode 0600; returns (listening socket, lock fd to keep open).

    `private_dir`: make the directory 0700 (the default qwen-chat directory; one we create is 0700).
    """
    path = Path(path).expanduser().absolute()
    if len(os.fsencode(str(path))) > MAX_SUN_PATH:
        raise UserError(
            f"socket path {path} is {len(os.fsencode(str(path)))} bytes, longer than the {MAX_SUN_PATH} a "
            "Unix socket allows: pass a shorter --socket (or set XDG_RUNTIME_DIR to a short directory)"
        )
    private_files.prepare_socket_dir(path, private_dir)
    fd = private_files.open_private(lock_path(path), os.O_RDWR, "lock file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _owner_pid(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise _already(path, pid) from None
        raise
    try:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UserError(f"{path} exists and is not a socket: remove it or pass another --socket")
            if _answers(path):  # a server that predates the lock file, or one on another lock
                raise _already(path, "?")
            path.unlink()  # stale: its server is gone
            log.info("removed the stale socket %s (its server is gone)", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return sock, fd
    except BaseException:
        os.close(fd)
        raise


def release_socket(path: str | os.PathLike, sock: socket.socket | None, fd: int | None) -> None:
    """Remove the socket file (the lock file stays, unlocked: removing it would race a new server)."""
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if fd is not None:
        os.close(fd)
