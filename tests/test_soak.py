"""bench/soak.py, small, on the CPU: chat traffic with pastes, cancels, dropped connections and a burst over
the KV capacity ends with no error, an idle cache and greedy replies equal to solo reruns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_soak_smoke_on_the_cpu(tiny_model):
    cmd = [sys.executable, "bench/soak.py", "--model", str(tiny_model), "--device", "cpu", "--duration", "8",
           "--clients", "3", "--max-model-len", "1024", "--paste-tokens", "200:400", "--new-tokens", "8:24",
           "--think", "0:0.3", "--check", "6"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "soak: PASS" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(line.startswith("burst: ") for line in lines)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert {"chat", "burst", "all"} <= rows.keys()
    assert int(rows["burst"].split("|")[2]) > 0  # the burst's requests streamed
    assert "leaked KV blocks: 0" in r.stdout and "engine errors: 0 error events" in r.stdout
