"""The offline quantizer: a float Qwen v1 checkpoint in, a quantized checkpoint directory out.

Shard by shard (memory: one shard plus its quantized copy; calibration holds one block at a time):
each target linear's `weight` becomes int8 `weight` + float32 `weight_scale` [n] (+ `input_scale` [1] for
static W8A8); smoothed norms get their new weights; everything else is copied as is. The output is
written to a temporary folder beside DST and renamed at the end, so a failure leaves nothing half
written; config.json records `quantize`, `quant_skip` and `quant_activation`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inference.config import ModelConfig
from inference.errors import UserError
from inference.eval.progress import ProgressBar
from inference.models.checkpoint import check_float_checkpoint, shard_map
from inference.quant import utils
from inference.quant.calibrate import CalibResult, TensorReader, calibrate, load_calib

TENSOR_FILES = ("model.safetensors.index.json",)


@dataclass
class QuantizeOptions:
    model: str  # resolved source directory
    out: str
    scheme: str
    calib: str | None = None
    smooth: float | None = None  # SmoothQuant alpha; default 0.5 with --calib, 0 = no smoothing
    skip: tuple[str, ...] | None = None  # None = the scheme's default
    calib_samples: int = 128
    calib_max_len: int = 512
    device: str = "auto"
    quiet: bool = False


def _validate(o: QuantizeOptions) -> tuple[Path, Path, ModelConfig]:
    o.scheme = utils.check_scheme(o.scheme)
    src, out = Path(o.model), Path(o.out)
    cfg = ModelConfig.from_dir(src)
    if cfg.quantize:
        raise UserError(f"{src} is already quantized ({cfg.quantize}); quantize the float checkpoint instead")
    if not (src / "model.safetensors.index.json").is_file() and not (src / "model.safetensors").is_file():
        from inference.quant.msmodelslim import find_layout

        if find_layout(src) is not None:
            raise UserError(f"{src} holds msmodelslim quantized weights; load it directly with --model {src}")
    if not (src / "qwen.tiktoken").is_file():
        raise UserError(f"{src / 'qwen.tiktoken'} not found: the checkpoint's tokenizer file is missing; "
                        "re-download it")
    if out.resolve() == src.resolve():
        raise UserError("--out must be a new folder, not the source checkpoint")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new folder or remove it first")
    if o.calib is not None and o.scheme != "w8a8":
        raise UserError("--calib applies to w8a8 only (w8a16 keeps activations in float and needs no calibration)")
    if o.smooth is not None and o.calib is None:
        raise UserError("--smooth needs --calib FILE.jsonl (smoothing factors come from calibration activations)")
    if o.smooth is not None and not 0.0 <= o.smooth <= 1.0:
        raise UserError(f"--smooth must be between 0 and 1 (0 turns smoothing off), got {o.smooth}")
    if o.calib_samples < 1 or o.calib_max_len < 2:
        raise UserError("--calib-samples must be at least 1 and --calib-max-len at least 2")
    if o.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {o.device!r}: use auto, cpu or cuda")
    return src, out, cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def convert_tensor(key: str, t: torch.Tensor, quantized: set[str], calib: CalibResult | None,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """The output tensors for one source tensor."""
    if calib is not None and key in calib.norm_weight:
        return {key: calib.norm_weight[key]}
    module, _, tname = key.rpartition(".")
    if tname != "weight" or module not in quantized:
        return {key: t}
    w = t.to(device=device, dtype=torch.float32)
    if calib is not None and module in calib.factors:
        w = w * calib.factors[module].to(device)[None, :]
    q, scale = utils.quantize_weight(w)
    out = {key: q.cpu(), f"{module}.weight_scale": scale.cpu()}
    if calib is not None:
        out[f"{module}.input_scale"] = torch.tensor([calib.input_scale[module]], dtype=torch.float32)
    return out


def quantized_modules(cfg: ModelConfig, skip) -> set[str]:
    names = set()
    for i in range(cfg.num_hidden_layers):
        mods = [f"transformer.h.{i}.{m}" for m in ("attn.c_attn", "attn.c_proj", "mlp.w2", "mlp.w1", "mlp.c_proj")]
        w2, w1 = mods[2], mods[3]
        if utils.is_skipped(w2, skip) != utils.is_skipped(w1, skip):
            raise UserError(f"--skip: {w2} and {w1} are one fused matrix in the engine; skip both or neither")
        names |= {m for m in mods if not utils.is_skipped(m, skip)}
    return names


def _write_config(src: Path, tmp: Path, o: QuantizeOptions, skip, calib: CalibResult | None, alpha) -> None:
    raw = json.loads((src / "config.json").read_text())
    raw["quantize"] = o.scheme
    raw["quant_skip"] = list(skip)
    if o.scheme == "w8a8":
        raw["quant_activation"] = "static" if calib is not None else "dynamic"
    raw["quantization_config"] = {
        "tool": "qwen-chat quantize", "scheme": o.scheme, "weights": "int8, symmetric, per output channel",
        "activations": ("float" if o.scheme == "w8a16" else
                        "int8, static per tensor (calibrated)" if calib is not None else "int8, dynamic per token"),
        "smoothquant_alpha": alpha, "skip": list(skip),
        "calibration": None if calib is None else {"file": Path(o.calib).name, "samples": calib.samples,
                                                   "tokens": calib.tokens},
    }
    (tmp / "config.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False))


def quantize_checkpoint(o: QuantizeOptions) -> dict:
    """Write the quantized checkpoint; returns a summary (sizes, time)."""
    t_start = time.monotonic()
    src, out, cfg = _validate(o)
    skip = utils.DEFAULT_SKIP[o.scheme] if o.skip is None else tuple(o.skip)
    quantized = quantized_modules(cfg, skip)
    files = shard_map(src)  # validates the source layout before any work
    check_float_checkpoint(src, cfg, files)
    device = _device(o.device)
    calib, alpha = None, None
    if o.calib is not None:
        from inference.tokenizer import QwenTokenizer

        samples = load_calib(o.calib, QwenTokenizer.from_dir(src), o.calib_samples, o.calib_max_len)
        alpha = 0.5 if o.smooth is None else o.smooth
        bar = ProgressBar(cfg.num_hidden_layers, "calibrating", enabled=not o.quiet)
        calib = calibrate(TensorReader(src), cfg, samples, quantized, alpha, device, progress=lambda n: bar.update())
        bar.close()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    in_bytes = out_bytes = 0
    try:
        names = sorted(files)
        weight_map: dict[str, str] = {}
        bar = ProgressBar(len(names), f"quantizing ({o.scheme})", enabled=not o.quiet)
        for i, fname in enumerate(names):
            part: dict[str, torch.Tensor] = {}
            with safe_open(str(src / fname), "pt") as f:
                for key in files[fname]:
                    t = f.get_tensor(key)
                    in_bytes += t.numel() * t.element_size()
                    part.update(convert_tensor(key, t, quantized, calib, device))
            oname = f"model-{i + 1:05d}-of-{len(names):05d}.safetensors"
            part = {k: v.contiguous() for k, v in part.items()}
            save_file(part, str(tmp / oname), metadata={"format": "pt"})
            out_bytes += sum(v.numel() * v.element_size() for v in part.values())
            weight_map.update(dict.fromkeys(part, oname))
            del part
            bar.update()
        bar.close()
        index = {"metadata": {"total_size": out_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _write_config(src, tmp, o, skip, calib, alpha)
        for p in src.iterdir():  # tokenizer, generation config, code, README ...
            if p.is_file() and not p.name.endswith(".safetensors") and p.name not in (*TENSOR_FILES, "config.json"):
                shutil.copy2(p, tmp / p.name)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "scheme": o.scheme, "quantized_linears": len(quantized), "skip": list(skip),
            "activations": "static" if calib is not None else ("dynamic" if o.scheme == "w8a8" else "float"),
            "smooth": alpha, "in_bytes": in_bytes, "out_bytes": out_bytes,
            "seconds": time.monotonic() - t_start}
