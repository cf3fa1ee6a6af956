"""Checkpoints in the Ascend msmodelslim layout (written here from known float weights) load and compute right."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.errors import UserError
from inference.eval.logits_metrics import aggregate, compare_logits
from inference.layers.linear import LinearBase
from inference.models.demo import DEMO_CONFIG, random_weights, write_checkpoint

CFG = {**DEMO_CONFIG, "seq_length": 256}
PROMPTS = [[9707, 11, 847, 829, 374, 264, 1273], list(range(1000, 1030)), [151644, 872, 198, 100644, 101889]]


def engine(model, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32", num_kv_blocks=64, **kw))


def prompt_logits(model, **kw) -> list[torch.Tensor]:
    e = engine(model, **kw)
    params = SamplingParams(max_new_tokens=1, temperature=0.0, logits="all")
    out = {}
    rids = [e.add_request(p, params) for p in PROMPTS]
    while e.has_unfinished():
        for o in e.step():
            if o.finished:
                out[o.request_id] = o.logits
    e.shutdown()
    return [out[r] for r in rids]


def activation_ranges(model_dir) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel min / max of every linear's input over PROMPTS, from the float engine (by checkpoint name)."""
    e = engine(model_dir)
    model, ranges = e.runner.model, {}

    def hook(names):
        def fn(_mod, args):
            x = args[0].float()
            for n in names:
                lo, hi = ranges.get(n, (x.amin(0), x.amax(0)))
                ranges[n] = (torch.minimum(lo, x.amin(0)), torch.maximum(hi, x.amax(0)))
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, LinearBase):
            names = [name.replace("w2_w1", "w2"), name.replace("w2_w1", "w1")] if "w2_w1" in name else [name]
            mod.register_forward_pre_hook(hook(names))
    e.generate(PROMPTS, SamplingParams(max_new_tokens=1, temperature=0.0))
    e.shutdown()
    return ranges


def _bits(t: torch.Tensor) -> torch.Tensor:
    """float32 -> its bits in an int64 (how msmodelslim stores deq_scale for fp16 models)."""
    return t.float().contiguous().view(torch.int32).to(torch.int64)


def export_w8a8(w: dict, ranges: dict, g: torch.Generator, shift: float = 0.2):
    """W8A8 with anti-outlier smoothing (ln_X.module.weight/bias), mlp.c_proj FLOAT, like Qwen-14B."""
    out, desc = dict(w), {"model_quant_type": "W8A8"}
    desc.update(dict.fromkeys(w, "FLOAT"))
    for i in range(CFG["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        for ln, mods in (("ln_1", ["attn.c_attn"]), ("ln_2", ["mlp.w2", "mlp.w1"])):
            gamma = w[p + ln + ".weight"].float()
            s = torch.rand(gamma.shape, generator=g) * 1.5 + 0.5
            new_gamma = (gamma / s).half()
            s_eff = gamma / new_gamma.float()
            beta = (torch.randn(gamma.shape, generator=g) * shift).half()
            out[p + ln + ".module.weight"], out[p + ln + ".module.bias"] = new_gamma, beta
            for m in mods:
                wf = w[p + m + ".weight"].float() * s_eff[None, :]
                bias = w[p + m + ".bias"].float() if p + m + ".bias" in w else torch.zeros(wf.shape[0])
                lo, hi = ranges[p + m]
                _w8a8_linear(out, desc, p + m, wf, bias - wf @ beta.float(),
                             float((lo / s_eff + beta.float()).min()), float((hi / s_eff + beta.float()).max()))
        lo, hi = ranges[p + "attn.c_proj"]
        _w8a8_linear(out, desc, p + "attn.c_proj", w[p + "attn.c_proj.weight"].float(), torch.zeros(CFG["hidden_size"]),
                     float(lo.min()), float(hi.max()))
    return out, desc


def _w8a8_linear(out, desc, name, wf, bias, lo, hi):
    amax = wf.abs().amax(1, keepdim=True)
    ws = amax / 127
    q = torch.round(wf / ws).clamp(-127, 127).to(torch.int8)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s_in = torch.tensor([(hi - lo) / 255]).half()
    off = torch.round(-128 - lo / s_in.float()).half()
    deq = s_in.float() * ws.reshape(-1)
    qb = torch.round(bias / deq).to(torch.int64) - off.float().to(torch.int64) * q.to(torch.int64).sum(1)
    out.update({f"{name}.weight": q, f"{name}.weight_scale": ws.half(),
                f"{name}.weight_offset": torch.zeros_like(ws).half(), f"{name}.input_scale": s_in,
                f"{name}.input_offset": off, f"{name}.deq_scale": _bits(deq), f"{name}.quant_bias": qb.to(torch.int32)})
    desc.update({f"{name}.{t}": "W8A8" for t in ("weight", "weight_scale", "weight_offset", "input_scale",
                                                  "input_offset", "deq_scale", "quant_bias")})


def export_w8a16(w: dict):
    """W8A16, asymmetric per channel; also returns the float weights the int8 values stand for."""
    out, desc, deq = dict(w), {"model_quant_type": "W8A16"}, dict(w)
    desc.update(dict.fromkeys(w, "FLOAT"))
    for i in range(CFG["num_hidden_layers"]):
        for m in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"):
            name = f"transformer.h.{i}.{m}"
            wf = w[name + ".weight"].float()
            lo, hi = wf.amin(1, keepdim=True), wf.amax(1, keepdim=True)
            scale = ((hi - lo) / 255).half()
            off = torch.round(-128 - lo / scale.float()).half()
            q = (torch.round(wf / scale.float()) + off.float()).clamp(-128, 127)
            out.update({name + ".weight": q.to(torch.int8), name + ".weight_scale": scale,
                        name + ".weight_offset": off})
            desc.update({name + ".weight": "W8A16", name + ".weight_scale": "W8A16", name + ".weight_offset": "W8A16"})
            deq[name + ".weight"] = (q - off.float()) * scale.float()
    return out, desc, deq


def write_dir(path, float_dir, tensors, desc, suffix, quantize):
    path.mkdir(parents=True)
    for f in ("qwen.tiktoken", "generation_config.json"):
        shutil.copy(float_dir / f, path / f)
    config = json.loads((float_dir / "config.json").read_text())
    if quantize:
        config["quantize"] = quantize
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / f"quant_model_weight{suffix}.safetensors"))
    (path / f"quant_model_description{suffix}.json").write_text(json.dumps(desc))
    return path


@pytest.fixture(scope="module")
def float16_model(tmp_path_factory):
    w = random_weights(CFG, seed=5, dtype=torch.float16)
    return write_checkpoint(tmp_path_factory.mktemp("ms") / "fp16", weights=w, dtype=torch.float16, seq_length=256), w


@pytest.fixture(scope="module")
def w8a8_dir(float16_model, tmp_path_factory):
    float_dir, w = float16_model
    tensors, desc = export_w8a8(w, activation_ranges(float_dir), torch.Generator().manual_seed(0))
    return write_dir(tmp_path_factory.mktemp("ms") / "w8a8", float_dir, tensors, desc, "_w8a8", "w8a8")


def test_w8a16_layout_computes_its_dequantized_weights(float16_model, tmp_path):
    float_dir, w = float16_model
    tensors, desc, deq = export_w8a16(w)
    ms = write_dir(tmp_path / "ms", float_dir, tensors, desc, "_w8a16", None)  # config without "quantize"
    ref = write_checkpoint(tmp_path / "deq", weights={k: v.float() for k, v in deq.items()}, dtype=torch.float32,
                           seq_length=256)
    got, want = prompt_logits(ms), prompt_logits(ref)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 2e-3 * b.abs().max().item()
    e = engine(ms)
    lin = e.runner.model.transformer.h[0].attn.c_attn
    assert lin.weight.dtype == torch.int8 and lin.quant_method.scheme == "w8a16" and lin.weight_offset.abs().sum() > 0
    e.shutdown()


def test_w8a8_layout_loads_with_smoothed_norms_and_float_mlp_c_proj(float16_model, w8a8_dir):
    float_dir, _ = float16_model
    e = engine(w8a8_dir)
    model = e.runner.model
    block = model.transformer.h[0]
    t = load_file(str(w8a8_dir / "quant_model_weight_w8a8.safetensors"))
    assert torch.equal(block.ln_1.weight, t["transformer.h.0.ln_1.module.weight"].float())
    assert torch.equal(block.ln_1.bias, t["transformer.h.0.ln_1.module.bias"].float())
    assert block.mlp.c_proj.quant_method is None and block.mlp.c_proj.weight.dtype == torch.float32
    lin = block.attn.c_attn
    assert lin.weight.dtype == torch.int8 and lin.bias is None  # the float bias lives in quant_bias
    # one layer by the layout's formula: y = (clamp(round(x / s + o)) @ q^T + quant_bias) * deq_scale
    x = torch.randn(5, CFG["hidden_size"])
    s, o = t["transformer.h.0.attn.c_attn.input_scale"].float(), t["transformer.h.0.attn.c_attn.input_offset"].float()
    xq = torch.round(x / s + o).clamp(-128, 127)
    deq = t["transformer.h.0.attn.c_attn.deq_scale"].to(torch.int32).view(torch.float32)
    want = (xq.double() @ t["transformer.h.0.attn.c_attn.weight"].double().t()
            + t["transformer.h.0.attn.c_attn.quant_bias"].double()) * deq.double()
    assert torch.allclose(lin(x).double(), want, rtol=1e-5, atol=1e-5)
    e.shutdown()
    s = aggregate([compare_logits(a, b) for a, b in zip(prompt_logits(float_dir), prompt_logits(w8a8_dir))])
    # a random tiny model has near-tied top logits, so top-1 flips at a cosine of 0.9995
    assert s["all_cosine_min"] > 0.995 and s["all_top1_agreement"] >= 0.8 and s["all_kl_mean"] < 2e-3, s


def test_msmodelslim_errors_are_clear(float16_model, w8a8_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(w8a8_dir, bad)
    (bad / "quant_model_description_w8a8.json").unlink()
    with pytest.raises(UserError, match="quant_model_description_w8a8.json"):
        engine(bad)
    shutil.copy(w8a8_dir / "quant_model_description_w8a8.json", bad)
    desc = json.loads((bad / "quant_model_description_w8a8.json").read_text())
    desc["transformer.h.0.attn.c_proj.weight"] = "W4A16"
    (bad / "quant_model_description_w8a8.json").write_text(json.dumps(desc))
    with pytest.raises(UserError, match="W4A16"):
        engine(bad)
    with pytest.raises(UserError, match="already quantized"):
        engine(w8a8_dir, quant="w8a16")
