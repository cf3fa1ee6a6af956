"""The engine's CPU threads (issue 31.8): chosen from the cores it may use, less one for the app, unless
--cpu-threads or OMP_NUM_THREADS says otherwise; the server's stats report them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from inference.client import EngineClient
from inference.config import EngineConfig
from inference.engine.device import cpu_threads
from inference.errors import UserError
from tests.support.server import CPU_ARGS, stop_server, wait_ready


def serve_threads(model, tmp_path, *extra: str, omp: str | None = None) -> int:
    """torch.get_num_threads() inside a real `serve` process (its stats), started with `extra` flags and
    OMP_NUM_THREADS = `omp` (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    sock, log = tmp_path / f"t{len(extra)}{omp}.sock", tmp_path / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "inference", "serve", "--model", str(model), *CPU_ARGS,
                                 "--no-kv-disk", "--socket", str(sock), *extra], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_ready(sock, proc, log)
        with EngineClient(sock) as c:
            return c.stats()["cpu_threads"]
    finally:
        stop_server(proc)


def test_serve_picks_free_cores_and_the_flag_overrides(tiny_model, tmp_path):
    usable = len(os.sched_getaffinity(0))
    assert serve_threads(tiny_model, tmp_path) == max(1, usable - 1)
    assert serve_threads(tiny_model, tmp_path, "--cpu-threads", "3", omp="1") == 3  # the flag wins
    assert serve_threads(tiny_model, tmp_path, omp="2") == 2


def test_default_leaves_a_core_and_shares_the_rest_among_ranks(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert cpu_threads() == 7 and cpu_threads(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_threads() == 1


@pytest.mark.parametrize("bad", [0, -2])
def test_bad_thread_count_is_refused(tmp_path, bad):
    with pytest.raises(UserError, match="--cpu-threads must be a positive integer"):
        EngineConfig(model=str(tmp_path), cpu_threads=bad)
