"""Tensor parallelism on CPU (gloo): same tokens and logits as tp=1, clean refusals, a dead rank ends the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inference.config import EngineConfig
from inference.engine.llm_engine import LLMEngine
from tests.support.tp_worker import run_prompts

HERE = Path(__file__).parent
PROMPTS = [[9707, 11, 847, 829, 374], [100644, 101889, 99489], list(range(1000, 1040)), [151644, 872, 198]]


def torchrun(n: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tp1(tiny_model):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=128))
    return run_prompts(engine, PROMPTS)


@pytest.mark.parametrize("n", [2, 4])
def test_tp_matches_tp1(tiny_model, tp1, tmp_path, n):
    out = tmp_path / f"tp{n}.pt"
    r = torchrun(n, str(HERE / "support" / "tp_worker.py"), str(tiny_model), json.dumps(PROMPTS), str(out), str(n))
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    assert got["tokens"] == tp1[0]
    assert (got["logits"] - tp1[1]).abs().max().item() < 1e-5


def run_cli(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "inference", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_generate_cli_tp2_prints_tp1_tokens(tiny_model):
    base = ["generate", "--model", str(tiny_model), "--prompt", "Tensor parallel", "--temperature", "0",
            "--max-new-tokens", "8", "--json", "--device", "cpu"]
    one, two = run_cli(*base), run_cli(*base, "--tp", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    t1, t2 = json.loads(one.stdout.splitlines()[-1]), json.loads(two.stdout.splitlines()[-1])
    assert len(t1["token_ids"]) == 8 and t1["token_ids"] == t2["token_ids"]


@pytest.mark.parametrize("tp, env, message", [
    ("3", {}, "odd tensor-parallel sizes"),
    ("16", {}, "does not divide the model's 8 attention heads"),
    ("2", {"FAKE_NPU": "1"}, "needs 2 npu devices but only 1"),
])
def test_refusals_before_anything_loads(tiny_model, tp, env, message):
    extra = {"PYTHONPATH": str(HERE / "fake_npu")} if env else {}
    device = "npu" if env else "cpu"
    r = run_cli("generate", "--model", str(tiny_model), "--prompt", "x", "--tp", tp, "--device", device, env=extra)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "loading" not in r.stderr


def test_a_bad_flag_with_tp_is_one_error_line_before_torchrun(tiny_model):
    r = run_cli("generate", "--model", str(tiny_model), "--prompt", "x", "--tp", "2", "--device", "cpu", "--bogus")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unrecognized arguments: --bogus (see `qwen-chat generate --help`)"


def test_fake_300i_duo_defaults_to_float16_and_refuses_bf16(tiny_model):
    code = ("from inference.config import EngineConfig, ModelConfig\n"
            "from inference.engine.device import resolve_device, resolve_dtype\n"
            f"m = ModelConfig.from_dir({str(tiny_model)!r})\n"
            "d = resolve_device(EngineConfig(model='x', device='npu'))\n"
            "print(d, resolve_dtype(EngineConfig(model='x', device='npu'), m, d))\n"
            "resolve_dtype(EngineConfig(model='x', device='npu', dtype='bfloat16'), m, d)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(HERE / "fake_npu")})
    assert r.stdout.strip() == "npu:0 torch.float16"
    assert "has no bfloat16: use --dtype float16" in r.stderr


def test_model_that_cannot_fit_is_refused(tmp_path, tiny_model):
    big = json.loads((tiny_model / "config.json").read_text())
    big.update(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, kv_channels=128,
               intermediate_size=49152, vocab_size=152064)
    (tmp_path / "config.json").write_text(json.dumps(big))
    (tmp_path / "qwen.tiktoken").symlink_to(tiny_model / "qwen.tiktoken")
    r = run_cli("generate", "--model", str(tmp_path), "--prompt", "x", "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 2 and "GiB per rank" in r.stderr and "--tp" in r.stderr


def _rank_pids(root: int) -> dict[int, int]:
    out = {}
    for pid in subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = int(pid)
    return out


def test_killed_rank_ends_the_job_with_a_named_error(tiny_model):
    cmd = [sys.executable, "-m", "inference", "generate", "--model", str(tiny_model), "--prompt", "long",
           "--temperature", "0", "--ignore-eos", "--max-new-tokens", "900", "--tp", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        ranks = {}
        while time.time() < deadline and len(ranks) < 2:
            time.sleep(0.5)
            ranks = _rank_pids(proc.pid)
        assert len(ranks) == 2, "ranks did not start"
        proc.stdout.read(1)  # rank 0 is generating
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
        assert time.time() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank: 1" in err or "rank 1" in err
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
