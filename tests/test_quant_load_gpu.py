"""CUDA: quantize-at-load and random int8 weights never hold a float copy of the int8 layers on the device
(torch.cuda.max_memory_allocated), and give the int8 values of quantizing the loaded float model.

Run on a GPU machine: python -m pytest -q tests/test_quant_load_gpu.py (about a minute on an H100).
"""

from __future__ import annotations

import gc

import pytest
import torch

from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.engine.model_runner import ModelRunner
from inference.models.demo import write_checkpoint
from tests.test_quant_load import BIG, float_then_quantized, quantized_copy

pytestmark = pytest.mark.gpu
MIB = 1 << 20


def load_peak(model_dir, **kw) -> tuple[ModelRunner, int, int]:
    """(runner, peak bytes allocated while building it, bytes of its weights)."""
    gc.collect()  # an earlier test's runner freed while this one loads would hide part of its peak
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    cfg = EngineConfig(model=str(model_dir), device="cuda", num_kv_blocks=16, **kw)
    r = ModelRunner(cfg, ModelConfig.from_dir(model_dir), torch.device("cuda"), torch.float16)
    torch.cuda.synchronize()
    weights = sum(p.numel() * p.element_size() for p in r.model.parameters())
    return r, torch.cuda.max_memory_allocated() - before, weights


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("big") / "qwen-big", shards=4, **BIG)


@pytest.mark.parametrize("scheme, source", [("w8a16", "checkpoint"), ("w8a8", "checkpoint"),
                                            ("w8a16", "quantized")])
def test_device_peak_of_quantize_at_load_is_one_copy(big_model, scheme, source):
    """--quant on a float checkpoint, or a `quantize` output: the int8 model, no fp16 copy of its linears."""
    if source == "quantized":
        r, peak, weights = load_peak(quantized_copy(big_model, scheme))
    else:
        r, peak, weights = load_peak(big_model, quant=scheme)
    int8 = sum(p.numel() for p in r.model.parameters() if p.dtype == torch.int8)
    float_copy = 2 * int8  # the fp16 weights of the int8 layers
    assert weights <= peak <= weights + 64 * MIB < weights + float_copy, (peak / MIB, weights / MIB)
    assert r.load_peak_bytes >= peak


def test_device_peak_of_random_int8_weights_is_one_copy():
    """7B shape, random weights drawn as int8 layer by layer: the fp16 model (15 GB) never exists."""
    import tempfile

    from inference.entrypoints.bench_shapes import SHAPES

    with tempfile.TemporaryDirectory() as tmp:
        d = write_checkpoint(f"{tmp}/random-7b", with_weights=False, **SHAPES["7b"])
        r, peak, weights = load_peak(d, quant="w8a16", extra={"random_weights": True})
    largest = 2 * 11008 * 4096 * 2  # one fp16 draw (w1) and its quantization temporaries stay below this
    assert weights <= peak <= weights + 3 * largest, (peak / MIB, weights / MIB)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantize_at_load_equals_quantizing_on_the_gpu(tiny_model, dtype):
    cfg = EngineConfig(model=str(tiny_model), device="cuda", dtype=dtype, num_kv_blocks=16, quant="w8a16")
    got = dict(ModelRunner(cfg, ModelConfig.from_dir(tiny_model), torch.device("cuda"),
                           getattr(torch, dtype)).model.named_parameters())
    with torch.device("cuda"):
        want = dict(float_then_quantized(tiny_model, "w8a16", getattr(torch, dtype)).named_parameters())
    assert set(got) == set(want)
    for name, p in got.items():
        assert p.device.type == "cuda" and torch.equal(p, want[name]), name


def test_kv_sizing_after_an_int8_load_counts_no_float_copy(big_model):
    """--gpu-memory-utilization: the KV cache takes what the int8 weights and one step's activations leave."""
    from inference.engine import memory
    from inference.engine.llm_engine import LLMEngine

    gc.collect()
    torch.cuda.empty_cache()  # earlier tests' runners: not this engine's memory
    free, total = torch.cuda.mem_get_info()
    cfg = EngineConfig(model=str(big_model), device="cuda", dtype="float16", quant="w8a16",
                       memory_utilization=0.5, max_num_seqs=4)
    e = LLMEngine(cfg)
    block = memory.kv_block_bytes(e.model_config, cfg, 2)
    weights = sum(p.numel() * p.element_size() for p in e.runner.model.parameters())
    kv = e.runner.num_blocks * block
    # half the GPU less what was in use before (the CUDA context), the weights and one step's activations
    # (256 MiB for the libraries the engine loads: cuBLAS workspaces, kernel modules)
    want = 0.5 * total - (total - free) - weights - e.worker.activation_peak
    assert weights + kv <= 0.5 * total and want - 256 * MIB <= kv <= want, (kv / MIB, want / MIB)
    out = e.generate([[1, 2, 3, 4]], SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0]) == 4
    e.shutdown()
