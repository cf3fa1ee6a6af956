"""Quantize-at-load (`--quant`) and random int8 weights keep one copy of the weights: the same int8 values as
quantizing the loaded float model, and a peak host memory of the int8 model plus about one shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.engine.model_runner import ModelRunner
from inference.entrypoints.bench_shapes import weight_read_bytes
from inference.models.checkpoint import load_weights
from inference.models.demo import write_checkpoint
from inference.models.qwen import QWenLMHeadModel
from inference.quant import utils
from inference.quant.apply import linear_targets, quantize_layer
from inference.quant.cli import main as quantize_main

# ~300 MB of bf16 weights in 4 shards; a small vocabulary so the linears (what gets quantized) dominate
BIG = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8, kv_channels=128,
           intermediate_size=2 * 2816, vocab_size=4096)


def float_then_quantized(model_dir: Path, scheme: str, dtype: torch.dtype) -> QWenLMHeadModel:
    """The model as loading built it before quantize-at-load: the whole float model, then each target."""
    m = ModelConfig.from_dir(model_dir)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = QWenLMHeadModel(m).eval()
    finally:
        torch.set_default_dtype(prev)
    load_weights(model, model_dir)
    for _, layer in linear_targets(model, utils.DEFAULT_SKIP[scheme]):
        quantize_layer(layer, scheme)
    return model


@pytest.mark.parametrize("scheme, dtype", [("w8a16", "float32"), ("w8a8", "float32"), ("w8a16", "bfloat16")])
def test_quantize_at_load_equals_quantizing_the_float_model(tiny_model, scheme, dtype):
    e = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype=dtype, num_kv_blocks=64, quant=scheme))
    want = dict(float_then_quantized(tiny_model, scheme, getattr(torch, dtype)).named_parameters())
    got = dict(e.runner.model.named_parameters())
    assert set(got) == set(want)
    int8 = [n for n, p in got.items() if p.dtype == torch.int8]
    assert len(int8) == 2 * (4 if scheme == "w8a16" else 3)  # every target of both blocks, mlp.c_proj float in w8a8
    for name, p in got.items():
        assert p.dtype == want[name].dtype and torch.equal(p, want[name]), name
    # and the tokens: greedy decoding through the engine against the same model quantized after loading
    prompts = [[9707, 11, 847, 829, 374, 264, 1273], list(range(3000, 3040))]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    got_tokens = e.generate(prompts, greedy)
    with torch.no_grad():
        for name, p in e.runner.model.named_parameters():
            p.copy_(want[name])
    assert e.generate(prompts, greedy) == got_tokens
    e.shutdown()


@pytest.mark.parametrize("change, message", [
    (lambda t: t[:, :-1], r"mlp.w1.weight: shape \[192, 127\] does not fit the config \(expected \[192, 128\]\)"),
    (lambda t: t.to(torch.int8), "mlp.w1.weight is stored as int8 but must be a floating-point tensor"),
])
def test_a_bad_tensor_quantized_as_read_is_one_clear_error(tmp_path, change, message):
    from inference.errors import UserError
    from inference.models.demo import DEMO_CONFIG, random_weights

    w = random_weights(DEMO_CONFIG)
    w["transformer.h.1.mlp.w1.weight"] = change(w["transformer.h.1.mlp.w1.weight"]).contiguous()
    d = write_checkpoint(tmp_path / "bad", weights=w)
    with pytest.raises(UserError, match=message):
        LLMEngine(EngineConfig(model=str(d), device="cpu", dtype="float32", num_kv_blocks=16, quant="w8a16"))


def test_random_int8_weights_are_drawn_quantized(tiny_model):
    cfg = EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=64, quant="w8a16",
                       extra={"random_weights": True, "seed": 3})
    runner = ModelRunner(cfg, ModelConfig.from_dir(tiny_model), torch.device("cpu"), torch.float32)
    layers = linear_targets(runner.model)
    assert len(layers) == 8
    for _, layer in layers:
        assert layer.weight.dtype == torch.int8 and layer.quant_method is not None
        assert layer.weight.abs().max() == 127  # each row's largest value maps to +-127
        absmax = layer.weight_scale * 127  # of each row of N(0, 0.02) draws: between 1 and 10 sigma
        assert ((absmax > 0.02) & (absmax < 0.2)).all()
    e = LLMEngine(cfg)
    out = e.generate([[1, 2, 3, 4]], SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0]) == 4
    e.shutdown()


def test_the_int8_floor_counts_the_weights_as_loaded(tiny_model):
    """The bench's floor reads int8 layers at one byte (plus scales), and what stays float (lm_head, the
    mlp.c_proj w8a8 skips) at its dtype."""
    cfg = EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=16, quant="w8a8")
    m = ModelConfig.from_dir(tiny_model)
    model = ModelRunner(cfg, m, torch.device("cpu"), torch.float32).model
    h, f, v, n = m.hidden_size, m.ffn_size, m.vocab_size, m.num_hidden_layers
    int8 = n * (4 * h * h + 2 * h * f) + 4 * n * (3 * h + h + 2 * f)  # weights, float32 scales per row
    floats = 4 * (n * h * f + v * h + n * 3 * h + (2 * n + 1) * h)  # mlp.c_proj, lm_head, c_attn bias, norms
    assert weight_read_bytes(model) == int8 + floats


@pytest.mark.parametrize("quant", [None, "w8a16", "w8a8"])
def test_the_preflight_weight_size_is_the_loaded_size(tiny_model, quant):
    """check_fits's estimate (before loading) is what loading allocates: the w8a8 skips stay float."""
    from inference.engine.memory import weight_bytes

    m = ModelConfig.from_dir(tiny_model)
    cfg = EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=16, quant=quant)
    model = ModelRunner(cfg, m, torch.device("cpu"), torch.float32).model
    assert weight_bytes(m, 4, 1, quant) == sum(p.numel() * p.element_size() for p in model.parameters())


PEAK = """
import json, sys
from pathlib import Path
import torch
from inference.entrypoints.bench_shapes import weight_read_bytes
from inference.config import EngineConfig, ModelConfig
from inference.engine.model_runner import ModelRunner

def status(field):
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(field))
model, quant, random = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
cfg = EngineConfig(model=model, device="cpu", dtype="float32", num_kv_blocks=16, quant=quant or None,
                   extra={"random_weights": random})
m = ModelConfig.from_dir(Path(model))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
base = status("VmRSS:")
r = ModelRunner(cfg, m, torch.device("cpu"), torch.float32)
ps = list(r.model.parameters())
print(json.dumps({"extra": status("VmHWM:") - base, "weights": sum(p.numel() * p.element_size() for p in ps),
                  "int8": sum(p.numel() for p in ps if p.dtype == torch.int8)}))
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("big") / "qwen-big", shards=4, **BIG)


def quantized_copy(src: Path, scheme: str) -> Path:
    """`qwen-chat quantize` output beside `src` (made once)."""
    out = src.parent / f"{src.name}-{scheme}"
    if not out.exists():
        assert quantize_main(["--model", str(src), "--out", str(out), "--scheme", scheme, "--device", "cpu",
                              "--quiet"]) == 0
    return out


@pytest.mark.parametrize("scheme, source", [("w8a16", "checkpoint"), ("w8a8", "checkpoint"), ("w8a16", "random"),
                                            ("w8a16", "quantized")])
def test_peak_host_memory_is_one_copy(big_model, scheme, source):
    """Loading with --quant (or a `quantize` output) holds the int8 model plus about one shard: never the float
    model (float32 here, four times the int8 one)."""
    model, quant = (quantized_copy(big_model, scheme), "") if source == "quantized" else (big_model, scheme)
    r = subprocess.run([sys.executable, "-c", PEAK, str(model), quant, "1" if source == "random" else "0"],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    shard = max(p.stat().st_size for p in model.glob("*.safetensors"))
    mib = 1 << 20
    bound = got["weights"] + shard + 128 * mib  # what stays + one shard mapped + temporaries and allocator slack
    float_copy = 4 * got["int8"]  # the float32 weights of the int8 layers: what loading must never hold
    assert bound < got["weights"] + float_copy  # the bound tells one copy from two
    assert got["weights"] <= got["extra"] <= bound, (got["extra"] / mib, bound / mib)
