"""`qwen-chat quantize` and `--quant` end to end on the tiny checkpoint: output layout, precision against the
float model (`eval --task logits`), offline = on the fly, and clear errors for bad input."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors import safe_open

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.eval.cli import main as eval_main
from inference.quant import quantize as quantize_mod
from inference.quant.cli import main as quantize_main

ENGINE = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "128", "--quiet"]
CALIB = ["The capital of France is Paris, and it is known for the Eiffel Tower.",
         "Once upon a time, in a small village by the sea, there lived an old fisherman.",
         "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
         "中国的首都是北京。长城是世界上最长的建筑。", "Question: What is 17 multiplied by 23?\nAnswer: 391"]


def write_calib(path):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in CALIB), "utf-8")
    return path


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    """quantize CLI outputs: w8a16, w8a8 (dynamic), w8a8 calibrated (static, smoothed); with their stderr."""
    root = tmp_path_factory.mktemp("quant")
    calib = write_calib(root / "calib.jsonl")
    out = {}
    for name, extra in (("w8a16", []), ("w8a8", []), ("w8a8-static", ["--calib", str(calib), "--smooth", "0.5"])):
        scheme = name.split("-")[0]
        assert quantize_main(["--model", str(tiny_model), "--out", str(root / name), "--scheme", scheme,
                              "--device", "cpu", *extra]) == 0
        out[name] = root / name
    return out


def read_all(d):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    out = {}
    for fname in sorted(set(index["weight_map"].values())):
        with safe_open(str(d / fname), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    assert set(out) == set(index["weight_map"])
    return out


def test_output_layout(tiny_model, quantized, capsys):
    src = read_all(tiny_model)
    for name, d in quantized.items():
        cfg = json.loads((d / "config.json").read_text())
        t = read_all(d)
        assert cfg["quantize"] == name.split("-")[0]
        assert (d / "qwen.tiktoken").is_file() and (d / "generation_config.json").is_file()
        assert len(list(d.glob("model-*.safetensors"))) == 2  # one output shard per input shard
        assert t["transformer.wte.weight"].dtype == t["lm_head.weight"].dtype == torch.bfloat16
        assert torch.equal(t["lm_head.weight"], src["lm_head.weight"])
        c_attn = "transformer.h.1.attn.c_attn"
        assert t[c_attn + ".weight"].dtype == torch.int8 and t[c_attn + ".weight_scale"].shape == (384,)
        assert t[c_attn + ".bias"].dtype == torch.bfloat16
        mlp_float = name.startswith("w8a8")
        assert cfg["quant_skip"] == (["mlp.c_proj"] if mlp_float else [])
        assert (t["transformer.h.0.mlp.c_proj.weight"].dtype == torch.bfloat16) == mlp_float
        assert ("transformer.h.0.mlp.w1.input_scale" in t) == (name == "w8a8-static")
    static = json.loads((quantized["w8a8-static"] / "config.json").read_text())
    assert static["quant_activation"] == "static" and static["quantization_config"]["calibration"]["samples"] == 5
    s = read_all(quantized["w8a8-static"])
    assert not torch.equal(s["transformer.h.0.ln_1.weight"], src["transformer.h.0.ln_1.weight"])  # smoothed
    assert torch.equal(s["transformer.ln_f.weight"], src["transformer.ln_f.weight"])


def run_logits(tmp_path, model, reference, *extra):
    out = tmp_path / f"logits-{abs(hash((str(model), extra)))}"
    assert eval_main(["--task", "logits", "--model", str(model), "--reference", str(reference),
                      "--reference-quant", "none", "--limit", "4", "--out", str(out), *ENGINE, *extra]) == 0
    return json.loads((out / "logits_results.json").read_text())["summary"]


@pytest.mark.parametrize("case, cos_floor", [("--quant w8a16", 0.998), ("--quant w8a8", 0.995),
                                             ("w8a16", 0.998), ("w8a8-static", 0.99)])
def test_precision_against_the_float_model(tmp_path, tiny_model, quantized, case, cos_floor):
    if case.startswith("--quant"):
        s = run_logits(tmp_path, tiny_model, tiny_model, *case.split())
    else:
        s = run_logits(tmp_path, quantized[case], tiny_model)
    assert s["prompts"] == 4 and s["all_max_abs_diff"] > 0  # it was quantized
    assert s["all_cosine_min"] >= cos_floor and s["last_cosine_min"] >= cos_floor, s
    # a random tiny model has near-tied top logits: a few flips are expected even at a cosine of 0.999
    assert s["all_top1_agreement"] >= 0.85 and s["last_top1_agreement"] >= 0.75, s
    assert s["all_kl_mean"] < 2e-3, s


def logits_of(model, quant=None):
    e = LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32", num_kv_blocks=64, quant=quant))
    rid = e.add_request([9707, 11, 847, 829, 374, 264, 1273], SamplingParams(max_new_tokens=1, logits="all"))
    out = None
    while e.has_unfinished():
        for o in e.step():
            if o.request_id == rid and o.finished:
                out = o.logits
    e.shutdown()
    return out


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8"])
def test_on_the_fly_equals_the_quantized_checkpoint(tiny_model, quantized, scheme):
    assert torch.equal(logits_of(tiny_model, quant=scheme), logits_of(quantized[scheme]))


@pytest.mark.parametrize("args, message", [
    (["--scheme", "w4a16"], "invalid choice: 'w4a16'"),
    (["--scheme", "w8a8", "--calib", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--scheme", "w8a8", "--calib", "BAD"], "bad.jsonl:2: not valid JSON"),
    (["--scheme", "w8a8", "--calib", "EMPTYTEXT"], 'empty.jsonl:1: expected {"text": "<non-empty text>"}'),
    (["--scheme", "w8a16", "--calib", "GOOD"], "--calib applies to w8a8 only"),
    (["--scheme", "w8a8", "--smooth", "0.5"], "--smooth needs --calib"),
    (["--scheme", "w8a8", "--calib", "GOOD", "--smooth", "1.5"], "--smooth must be between 0 and 1"),
    (["--scheme", "w8a8", "--skip", "mlp.w1"], "skip both or neither"),
])
def test_bad_input_gives_a_clear_error(tiny_model, tmp_path, capsys, args, message):
    files = {"BAD": tmp_path / "bad.jsonl", "EMPTYTEXT": tmp_path / "empty.jsonl", "GOOD": tmp_path / "good.jsonl"}
    files["BAD"].write_text('{"text": "fine"}\n{"text": broken\n')
    files["EMPTYTEXT"].write_text('{"text": "  "}\n')
    write_calib(files["GOOD"])
    args = [str(files.get(a, tmp_path / a if a.endswith(".jsonl") else a)) for a in args]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "invalid choice" in message else contextlib.nullcontext():
        assert quantize_main(["--model", str(tiny_model), "--out", str(out), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_and_quantized_source_are_refused(tiny_model, quantized, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert quantize_main(["--model", str(tiny_model), "--out", str(busy), "--scheme", "w8a16"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    assert quantize_main(["--model", str(quantized["w8a16"]), "--out", str(tmp_path / "x"), "--scheme", "w8a8"]) == 2
    assert "already quantized (w8a16)" in capsys.readouterr().err


def test_a_failure_midway_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch, capsys):
    real, calls = quantize_mod.save_file, []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(quantize_mod, "save_file", failing_save)
    assert quantize_main(["--model", str(tiny_model), "--out", str(tmp_path / "dst"), "--scheme", "w8a16"]) == 1
    assert list(tmp_path.iterdir()) == []  # neither dst nor its temporary folder
    err = capsys.readouterr().err
    assert "quantizing (w8a16)" in err  # the progress bar ran
    assert "No space left on device" in err and "nothing was written" in err
