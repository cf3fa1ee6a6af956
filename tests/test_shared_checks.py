"""Checks that several commands share live in one torch-free place each."""

import os
import subprocess
import sys

import pytest

from inference.config import check_tp_devices
from inference.errors import UserError


def test_tp_over_the_visible_devices_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^--tp 4 needs 4 cuda devices but only 2 are visible; lower --tp$"):
        check_tp_devices(4, "cuda", 2)
    check_tp_devices(2, "cuda", 2)
    check_tp_devices(8, "cpu", 1)  # CPU ranks share the cores
    check_tp_devices(8, "npu", None)  # count unknown: the engine's own check decides


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_rank_comes_from_torchrun_without_importing_torch():
    r = _python("import sys; from inference import envs; print(envs.rank(), 'torch' in sys.modules)", RANK="3")
    assert r.stdout.split() == ["3", "False"], r.stderr
    r = _python("import os; os.environ.pop('RANK', None); from inference import envs; print(envs.rank())")
    assert r.stdout.split() == ["0"], r.stderr


def test_a_worker_ranks_error_line_names_its_rank(tmp_path):
    r = subprocess.run([sys.executable, "-m", "inference", "generate", "--model", str(tmp_path / "nowhere"),
                        "--prompt", "x"], capture_output=True, text=True, timeout=120, env={**os.environ, "RANK": "1"})
    assert r.returncode == 2 and r.stderr.startswith("error (rank 1): "), r.stderr[-500:]
