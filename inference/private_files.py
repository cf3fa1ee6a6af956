"""Files of chats are private: folders 0700, files 0600 whatever the umask, opened without following
symbolic links, and sockets only in folders no other user can write to. No torch here (the clients use it).

    d = private_dir(path)                  # create missing levels 0700; tighten the last one if it is ours
    fd = open_private(path, os.O_WRONLY | os.O_APPEND, "log file")   # O_NOFOLLOW, a regular file of ours
    problem = shared_dir_problem(folder)   # why another user could plant or replace files there, or None
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from inference.errors import UserError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def private_dir(path: str | os.PathLike, tighten: bool = True) -> Path:
    """Create `path` and its missing parents with mode 0700 (each level: mkdir's parents=True would use
    0777 minus the umask); when `tighten`, make an existing `path` of ours 0700 too."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)  # the umask can only take bits away from 0700
        except FileExistsError:
            pass
    if tighten or missing:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    return path


def shared_dir_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is unsafe for a socket or a lock (another user can write there, or it is not ours),
    or None when only this user controls it."""
    try:
        st = os.stat(folder)
    except OSError as e:
        return f"cannot inspect the folder {folder}: {e.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        return f"the folder {folder} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if mode & 0o022:
        who = "every user" if mode & 0o002 else "its group"
        return f"the folder {folder} (mode {mode:04o}) is writable by {who}"
    return None


def check_socket_dir(folder: str | os.PathLike) -> None:
    """Raise UserError when another user could plant or replace files in the socket folder."""
    problem = shared_dir_problem(folder)
    if problem:
        raise UserError(
            f"{problem}: another user could take over the engine's socket there. Use a folder only you can "
            f"write to (e.g. `mkdir -m 700 ~/qwen-run` and --socket ~/qwen-run/NAME.sock), or leave --socket "
            "out to use $XDG_RUNTIME_DIR/qwen-chat"
        )


def check_opened(fd: int, path: str | os.PathLike, what: str) -> os.stat_result:
    """The file behind `fd` must be a regular file of ours with one link; make it 0600."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"the {what} {path} is not a regular file: remove it")
    if st.st_uid != os.getuid():
        raise UserError(f"the {what} {path} belongs to uid {st.st_uid}, not to you: remove it or use another path")
    if st.st_nlink != 1:
        raise UserError(f"the {what} {path} has {st.st_nlink} hard links: remove it or use another path")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return st


def open_private(path: str | os.PathLike, flags: int, what: str) -> int:
    """Open `path` (creating it 0600, O_CREAT|O_EXCL, when it is new) without following a symbolic link;
    raise UserError when what is there is a link, not a regular file, or not ours. `flags`: the access mode
    and e.g. O_APPEND, without O_CREAT."""
    flags |= NOFOLLOW | CLOEXEC
    for _ in range(10):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                fd = os.open(path, flags | os.O_NONBLOCK)  # a FIFO planted there must not block us
            except FileNotFoundError:
                continue  # removed between the two opens: try creating it again
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(path):
                    raise UserError(f"the {what} {path} is a symbolic link: qwen-chat does not follow links "
                                    "for its files; remove it or use another path") from None
                raise UserError(f"cannot open the {what} {path}: {e.strerror}") from None
            try:
                check_opened(fd, path, what)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd
        except OSError as e:
            raise UserError(f"cannot create the {what} {path}: {e.strerror}") from None
        try:
            check_opened(fd, path, what)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UserError(f"cannot open the {what} {path}: it keeps disappearing")


def prepare_socket_dir(path: Path, private: bool) -> None:
    """Create the socket's folder (0700, each missing level); make it 0700 when `private` (the default
    qwen-chat folder); refuse a folder that is not ours or that others can write to."""
    try:
        private_dir(path.parent, tighten=private)
    except OSError as e:
        raise UserError(f"cannot create the socket directory {path.parent}: {e.strerror}; "
                        "pass --socket elsewhere") from e
    check_socket_dir(path.parent)
