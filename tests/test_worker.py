"""The engine's entry point under torchrun (`start_engine`): rank 0 gets the engine, a rank > 0 runs its
`Worker` until rank 0 shuts down and then ends cleanly; no rank > 0 ever builds an `LLMEngine`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine

SCRIPT = Path(__file__).parent / "support" / "entry_worker.py"


def test_rank1_worker_returns_when_rank0_shuts_down_and_the_job_exits_0(tiny_model, tiny_engine, tmp_path):
    out, kv = tmp_path / "out", tmp_path / "kv"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           str(tiny_model), str(out), str(kv)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    marks = sorted(p.name for p in out.iterdir() if p.name != "tokens.json")
    # rank 1 left its loop on rank 0's stop and ended inside start_engine; rank 0 never ran a worker loop
    assert marks == ["loop-returned-rank1", "start-returned-rank0"]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    assert json.loads((out / "tokens.json").read_text()) == tiny_engine.generate([list(range(100, 140))], greedy)
    assert sorted(p.name for p in kv.glob("*/rank*")) == ["rank0", "rank1"]  # each rank its own disk tier


def test_an_engine_on_a_rank_above_0_is_refused_before_anything_loads(tiny_model, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="start_engine"):
        LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=16))
