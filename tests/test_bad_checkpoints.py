"""A damaged checkpoint gets the same answer from every command (real subprocesses): one `error:` line
that names the problem, exit code 2, no traceback; `serve` included, which loads in its engine thread."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.timeout(600)
CPU = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "64"]


def _shards(d):
    return sorted(d.glob("model-*.safetensors"))


def _rewrite(d, change):
    f = _shards(d)[0]
    w = load_file(str(f))
    change(w)
    save_file(w, str(f), metadata={"format": "pt"})


def wrong_arch(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (d / "config.json").write_text(json.dumps(cfg))


def missing_shard(d):
    _shards(d)[-1].unlink()


def truncated(d):
    f = _shards(d)[0]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def wrong_shape(d):
    def change(w):
        key = next(k for k in w if k.endswith("ln_1.weight"))
        w[key] = torch.ones(7, dtype=w[key].dtype)
    _rewrite(d, change)


def no_tiktoken(d):
    (d / "qwen.tiktoken").unlink()


def int8_tensor(d):
    def change(w):
        key = next(k for k in w if k.endswith("mlp.c_proj.weight"))
        w[key] = torch.ones(w[key].shape, dtype=torch.int8)
    _rewrite(d, change)


def negative_layers(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = -1
    (d / "config.json").write_text(json.dumps(cfg))


KINDS = {
    "wrong architecture": (wrong_arch, "is not Qwen v1"),
    "missing shard": (missing_shard, "is missing; re-download"),
    "truncated file": (truncated, "cannot be read"),
    "wrong tensor shape": (wrong_shape, "does not fit the config"),
    "missing qwen.tiktoken": (no_tiktoken, "qwen.tiktoken"),
    "int8 tensor in a bf16 checkpoint": (int8_tensor, "int8"),
    "num_hidden_layers -1": (negative_layers, "num_hidden_layers must be a positive integer"),
}


@pytest.fixture(scope="module")
def damaged(tiny_model, tmp_path_factory):
    """One damaged copy of the tiny checkpoint per kind."""
    out = {}
    for name, (damage, _) in KINDS.items():
        d = tmp_path_factory.mktemp("bad") / "ckpt"
        shutil.copytree(tiny_model, d)
        damage(d)
        out[name] = d
    return out


def command(cmd, model, tmp):
    if cmd == "serve":
        return ["serve", "--model", str(model), *CPU, "--socket", str(tmp / "s.sock"), "--no-kv-disk"]
    if cmd == "generate":
        return ["generate", "--model", str(model), *CPU, "--prompt", "hello", "--max-new-tokens", "2"]
    if cmd == "eval":
        return ["eval", "--task", "logits", "--model", str(model), *CPU, "--limit", "1", "--out", str(tmp / "o")]
    if cmd == "quantize":
        return ["quantize", "--model", str(model), "--out", str(tmp / "q"), "--scheme", "w8a16"]
    return ["bench", "--model", str(model), *CPU, "--cases", "1:8:2"]


def run(argv, tmp):
    return subprocess.run([sys.executable, "-m", "inference", *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_error_line(r, message):
    err = r.stderr
    assert r.returncode == 2, (r.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], err[-3000:]
    assert sum(ln.startswith("error") for ln in lines) == 1, err[-3000:]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("cmd", ["serve", "generate"])
def test_serve_and_generate_report_a_bad_checkpoint_in_one_line(cmd, kind, damaged, tmp_path):
    r = run(command(cmd, damaged[kind], tmp_path), tmp_path)
    assert_one_error_line(r, KINDS[kind][1])
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("kind", list(KINDS))
def test_quantize_checks_the_whole_checkpoint_before_writing(kind, damaged, tmp_path):
    r = run(command("quantize", damaged[kind], tmp_path), tmp_path)
    assert_one_error_line(r, KINDS[kind][1])
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.tmp-*"))


@pytest.mark.parametrize("cmd, kind", [("eval", "truncated file"), ("bench", "int8 tensor in a bf16 checkpoint")])
def test_eval_and_bench_keep_the_same_contract(cmd, kind, damaged, tmp_path):
    r = run(command(cmd, damaged[kind], tmp_path), tmp_path)
    assert_one_error_line(r, KINDS[kind][1])


@pytest.mark.parametrize("field, value", [("num_hidden_layers", -1), ("num_hidden_layers", 0),
                                          ("hidden_size", "4096"), ("vocab_size", True), ("seq_length", 1.5)])
def test_config_sizes_must_be_positive_integers(field, value):
    from inference.config import ModelConfig
    from inference.errors import UserError
    from inference.models.demo import DEMO_CONFIG

    raw = {**DEMO_CONFIG, "architectures": ["QWenLMHeadModel"], field: value}
    with pytest.raises(UserError, match=f"config.json: {field} must be a positive integer, got {value!r}"):
        ModelConfig.from_dict(raw, source="config.json")


def test_serve_refuses_a_folder_without_a_model_before_it_logs_anything(tmp_path):
    """What needs no loading (config.json) is checked before the server listens: one line, nothing else."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(command("serve", empty, tmp_path), tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {empty}/config.json not found: a model directory needs the config.json of a Qwen v1 checkpoint"]
