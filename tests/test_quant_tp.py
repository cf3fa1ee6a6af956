"""Quantized models under tensor parallelism (2 gloo ranks via torchrun) give tp=1's tokens and logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_quant_msmodelslim import CFG, activation_ranges, export_w8a8, write_dir

from inference.config import EngineConfig
from inference.engine.llm_engine import LLMEngine
from inference.models.demo import random_weights, write_checkpoint
from tests.support.tp_worker import run_prompts

PROMPTS = [[9707, 11, 847, 829, 374], [100644, 101889, 99489], list(range(1000, 1040)), [151644, 872, 198]]


def generate(model, quant, tp, tmp_path):
    if tp == 1:
        e = LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32", num_kv_blocks=128, quant=quant))
        out = run_prompts(e, PROMPTS)
        e.shutdown()
        return out
    out = tmp_path / "out.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}",
           str(Path(__file__).parent / "support" / "tp_worker.py"), str(model), json.dumps(PROMPTS), str(out), str(tp),
           quant or ""]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    return got["tokens"], got["logits"]


@pytest.fixture(scope="module")
def msmodelslim_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpms")
    w = random_weights(CFG, seed=7, dtype=torch.float16)
    float_dir = write_checkpoint(root / "fp16", weights=w, dtype=torch.float16, seq_length=256)
    tensors, desc = export_w8a8(w, activation_ranges(float_dir), torch.Generator().manual_seed(1))
    return write_dir(root / "ms", float_dir, tensors, desc, "_w8a8", "w8a8")


@pytest.mark.parametrize("case", ["--quant w8a8", "msmodelslim w8a8"])
def test_tp2_quantized_equals_tp1(case, tiny_model, msmodelslim_dir, tmp_path):
    """--quant w8a8: dynamic per-token scales and on-the-fly weight scales of row-parallel layers agree across
    ranks; msmodelslim: static per-tensor scales with offsets, quant_bias added once (rank 0)."""
    model, quant = {"--quant w8a8": (tiny_model, "w8a8"), "msmodelslim w8a8": (msmodelslim_dir, None)}[case]
    t1, l1 = generate(model, quant, 1, tmp_path)
    t2, l2 = generate(model, quant, 2, tmp_path)
    assert t1 == t2
    assert (l1 - l2).abs().max().item() < 1e-3 * l1.abs().max().item()
