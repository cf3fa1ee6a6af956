"""Whom a client talks to: before a single byte goes out, the socket file and its folder must belong to
this user (no one else can write in the folder) and the process listening must run as this user.

Another user who binds the socket path first (a shared folder, a squatted name) would otherwise get
every prompt; these checks make the clients refuse with `UntrustedPeer` instead.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys

from inference.client._common import UntrustedPeer
from inference.private_files import shared_dir_problem

_LOCAL_PEERCRED = 0x001  # <sys/un.h> on macOS and FreeBSD; struct xucred {u_int version; uid_t uid; ...}


def check_socket_path(path: str) -> None:
    """The folder is ours and only ours to write; the socket file, when there, is ours."""
    problem = shared_dir_problem(os.path.dirname(os.path.abspath(path)) or ".")
    if problem is not None:
        raise UntrustedPeer(
            f"refusing to talk to the engine socket {path}: {problem}, so another user could have put a "
            "socket there. Use a socket in a folder only you can write to (the default "
            "$XDG_RUNTIME_DIR/qwen-chat is one)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # connect() reports that nothing listens
    except OSError as e:
        raise UntrustedPeer(f"cannot inspect the engine socket {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UntrustedPeer(f"refusing to talk to {path}: it is not a socket (remove it)")
    if st.st_uid != os.getuid():
        raise UntrustedPeer(f"refusing to talk to the engine socket {path}: it belongs to uid {st.st_uid}, "
                            f"not to you (uid {os.getuid()}); remove it or use another --socket")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket; None where the platform
    cannot tell."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid;}
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[1]
    if sys.platform == "darwin" or sys.platform.startswith("freebsd"):  # getpeereid() reads the same
        raw = sock.getsockopt(0, _LOCAL_PEERCRED, 256)
        return struct.unpack_from("2I", raw)[1]
    return None


def check_peer(sock, path: str) -> None:
    """Raise UntrustedPeer unless the listening process runs as this user."""
    try:
        uid = peer_uid(sock)
    except OSError as e:
        raise UntrustedPeer(f"cannot tell who listens on {path} ({e}); refusing to send anything") from None
    if uid is not None and uid != os.getuid():
        raise UntrustedPeer(
            f"refusing to talk to {path}: the process listening there runs as uid {uid}, not as you "
            f"(uid {os.getuid()}); another user may be squatting the socket. Stop it or use another --socket")
