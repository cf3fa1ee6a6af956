"""Helpers for the privacy tests (this module holds no tests): another local user as the attacker, run
under a second uid with `setpriv` (root only), and folders that user can reach."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

OTHER_UID = 65534  # nobody
SYSTEM_PYTHON = "/usr/bin/python3"  # the attacker's python: the venv's may live under a private home


def need_second_uid() -> None:
    if os.getuid() != 0:
        pytest.skip("the attacker runs under a second uid, which needs root (setpriv)")
    if not shutil.which("setpriv"):
        pytest.skip("the attacker runs under a second uid with setpriv (util-linux), which is not installed")


def as_other(*cmd: str) -> list[str]:
    need_second_uid()
    return ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *cmd]


def other_run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(as_other(*cmd), capture_output=True, text=True, timeout=30, cwd="/")


def other_can_read(path: Path) -> bool:
    """Whether the other user can read the file (or list the folder) at `path`."""
    op = "os.listdir(p)" if path.is_dir() else "open(p, 'rb').read(1)"
    r = other_run(SYSTEM_PYTHON, "-I", "-c", f"import os, sys; p = sys.argv[1]; {op}", str(path))
    return r.returncode == 0


@contextmanager
def folder(mode: int):
    """A folder under /tmp with `mode`: 0o1777 (shared, sticky like /tmp), 0o777, or 0o755 (a home folder
    others may traverse, unlike pytest's 0700 tmp_path)."""
    d = Path(tempfile.mkdtemp(prefix="qwen-priv-", dir="/tmp"))
    os.chmod(d, mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777
