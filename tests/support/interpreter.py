"""Kernel checks through Triton's CPU interpreter, each in a fresh Python: TRITON_INTERPRET must be set before
Triton is imported, which this test process has already done without it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_interpreted(code: str, ok: str, timeout: int) -> None:
    """Runs `code` with TRITON_INTERPRET=1 and asserts that it exits 0 and prints `ok` (its stderr's tail as the
    message otherwise); skips where Triton is not installed."""
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and ok in r.stdout, r.stderr[-3000:]
