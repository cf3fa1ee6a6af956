"""The sessions database is private: its folder 0700, the database and its -wal and -shm files 0600
whatever the umask, none of them a symbolic link or another user's (stdlib only).

SQLite creates -wal and -shm with the database file's mode, so a database created 0600 keeps them 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sessions.records import SessionError

SIDE_FILES = ("-wal", "-shm", "-journal")


def default_dir() -> Path:
    """$XDG_DATA_HOME/qwen-chat (XDG default ~/.local/share/qwen-chat): ours, so made 0700 on every start."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "qwen-chat"


def _make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents 0700 each; tighten it when it is the default folder (the
    same rule as inference/private_files.private_dir: sessions/ imports nothing of inference/)."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
    st = folder.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077 and (
            missing or folder.absolute() == default_dir().absolute()):
        os.chmod(folder, stat.S_IMODE(st.st_mode) & 0o700)


def _check_file(path: Path) -> bool:
    """True when `path` exists (a regular file of ours, now 0600); False when it does not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise SessionError(f"{path} is a symbolic link: qwen-chat does not follow links for its files; "
                           "pass the real path (--db or QWEN_CHAT_SESSIONS_DB)")
    if not stat.S_ISREG(st.st_mode):
        raise SessionError(f"{path} is not a regular file: move it away or pass another --db path")
    if st.st_uid != os.getuid():
        raise SessionError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
                           "pass another --db path")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.chmod(path, 0o600)
    return True


def secure_db_files(path: Path) -> None:
    """Before SQLite opens `path`: a private folder, and the database (created empty, 0600, when new) and
    its side files checked and made 0600. Raises SessionError."""
    if str(path) == ":memory:" or str(path).startswith("file:"):
        return
    folder = path.parent
    try:
        _make_dirs(folder)
    except OSError as e:
        raise SessionError(f"cannot create the folder for the sessions database {path}: {e}") from e
    st = folder.stat()
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise SessionError(
            f"the folder {folder} of the sessions database is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): they could read your chats through files planted there. "
            "Pass a --db path in a folder only you can write to (e.g. `chmod go-w` it)")
    try:
        for side in SIDE_FILES:
            _check_file(Path(f"{path}{side}"))
        if not _check_file(path):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                os.fchmod(fd, 0o600)  # an empty file is an empty database to SQLite
                os.close(fd)
            except FileExistsError:
                _check_file(path)
    except OSError as e:
        raise SessionError(f"cannot secure the sessions database {path}: {e}") from e
