"""Bad input to `generate`: one `error:` line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.entrypoints.cli import main


@pytest.fixture
def broken(tmp_path, tiny_model):
    """A writable copy of the tiny checkpoint to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_model, dst)
    return dst


def run(capsys, *args):
    rc = main(["generate", "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2", *args])
    err = capsys.readouterr().err
    return rc, err


def first_shard(d):
    return sorted(d.glob("model-*.safetensors"))[0]


def drop_tensor(d):
    f = first_shard(d)
    w = load_file(str(f))
    w.pop(sorted(w)[0])
    save_file(w, str(f))


def bad_shape(d):
    f = first_shard(d)
    w = load_file(str(f))
    key = next(k for k in w if k.endswith("ln_1.weight"))
    w[key] = torch.ones(7, dtype=w[key].dtype)
    save_file(w, str(f))


def wrong_arch(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage, args, message", [
    (None, ["--model", "/nonexistent/qwen"], "no such directory"),
    (wrong_arch, [], "is not Qwen v1"),
    (drop_tensor, [], "re-download this shard"),
    (bad_shape, [], "does not fit the config"),
    (lambda d: (d / "qwen.tiktoken").unlink(), [], "qwen.tiktoken"),
    (None, ["--prompt-ids", ",".join(["5"] * 1100)], "context window"),
    (None, ["--device", "tpu"], "unknown device 'tpu'"),
    (None, ["--dtype", "float8"], "unknown dtype 'float8'"),
    (None, ["--prompt-ids", "1,x"], "comma-separated integers"),
])
def test_bad_input_is_one_clear_line(capsys, broken, damage, args, message):
    _check_one_line(capsys, broken, damage, args, message)


def test_missing_alias_is_one_clear_line(capsys, broken, tmp_path, monkeypatch):
    from inference import envs

    monkeypatch.setattr(envs, "MODEL_DIR", None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    _check_one_line(capsys, broken, None, ["--model", "14b-chat"], "huggingface-cli download Qwen/Qwen-14B-Chat")


def _check_one_line(capsys, broken, damage, args, message):
    if damage:
        damage(broken)
    if "--prompt-ids" not in args:
        args = [*args, "--prompt", "hello"]
    if "--model" not in args:
        args = ["--model", str(broken), *args]
    rc, err = run(capsys, *args)
    assert rc == 2
    assert message in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in err
