"""Load checkpoints quantized by Ascend msmodelslim (the layout MindIE reads), so users of the reference can
bring their quantized weights: `--model DIR` where DIR holds config.json, the tokenizer and

    quant_model_weight_w8a8.safetensors  + quant_model_description_w8a8.json    (or _w8a16, or no suffix;
                                                                                  or a .safetensors.index.json)

The description maps every tensor to "W8A8" / "W8A16" / "FLOAT". Per quantized linear of weight [n, k]:
- W8A16: `weight` int8, `weight_scale` [n, 1], `weight_offset` [n, 1]; w = (q - offset) * scale. Float `bias`.
- W8A8: `weight` int8 (symmetric per channel), `input_scale` / `input_offset` [1] (static asymmetric
  activations: xq = clamp(round(x / input_scale + input_offset), -128, 127)), `deq_scale` [n] (float32,
  or its bits in int64 for fp16 models), `quant_bias` int32 [n];
  y = (xq wq^T + quant_bias) * deq_scale. quant_bias folds the float bias (and the offset's correction),
  so a W8A8 layer's float `bias`, if present, is not added (as MindIE reads it).
- Anti-outlier smoothing: `ln_X.module.weight` / `ln_X.module.bias` replace `ln_X.weight`: RMSNorm with bias.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from inference.errors import UserError
from inference.layers.layernorm import RMSNorm
from inference.layers.linear import LinearBase, RowParallelLinear
from inference.models.checkpoint import default_loader, materialize
from inference.quant import params
from inference.quant.apply import checkpoint_names
from inference.quant.methods import W8A8LinearMethod, W8A16LinearMethod

SUFFIXES = ("_w8a8", "_w8a16", "")
SMALL = ("weight_scale", "weight_offset", "input_scale", "input_offset", "deq_scale", "quant_bias")


class BiasedRMSNorm(RMSNorm):
    """RMSNorm with an additive bias (what anti-outlier smoothing leaves on the norm)."""

    def __init__(self, hidden: int, eps: float, dtype, device):
        super().__init__(hidden, eps)
        self.weight = torch.nn.Parameter(torch.ones(hidden, dtype=dtype, device=device), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(hidden, dtype=dtype, device=device), requires_grad=False)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return super().norm(x) + self.bias


def find_layout(model_dir: Path) -> tuple[dict[str, list[str]], dict] | None:
    """(file -> tensor names, description) when `model_dir` holds the msmodelslim layout, else None."""
    model_dir = Path(model_dir)
    for sfx in SUFFIXES:
        single = model_dir / f"quant_model_weight{sfx}.safetensors"
        index = model_dir / f"quant_model_weight{sfx}.safetensors.index.json"
        if not (single.is_file() or index.is_file()):
            continue
        desc_path = model_dir / f"quant_model_description{sfx}.json"
        if not desc_path.is_file():
            raise UserError(f"{model_dir}: {single.name} has no {desc_path.name} beside it; copy the description "
                            "file msmodelslim wrote with the weights")
        try:
            desc = json.loads(desc_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{desc_path} is not valid JSON ({e})") from e
        if not isinstance(desc, dict):
            raise UserError(f"{desc_path}: expected a JSON object mapping tensor names to W8A8/W8A16/FLOAT")
        if index.is_file():
            files = _index_files(index)
        else:
            with safe_open(str(single), "pt") as f:
                files = {single.name: list(f.keys())}
        return files, desc
    for p in model_dir.glob("quant_model_weight_*.safetensors"):
        raise UserError(f"{p.name}: this msmodelslim quantization type is not supported; qwen-chat loads W8A8 "
                        "and W8A16 (quant_model_weight_w8a8 / _w8a16)")
    return None


def _index_files(index: Path) -> dict[str, list[str]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{index} is not a valid safetensors index ({e})") from e
    files: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        files.setdefault(fname, []).append(name)
    for fname in files:
        if not (index.parent / fname).is_file():
            raise UserError(f"{index.parent / fname} (listed in {index.name}) is missing")
    return files


def _float32(t: torch.Tensor, name: str) -> torch.Tensor:
    if name.endswith("deq_scale") and t.dtype == torch.int64:  # fp16 models: float32 bits in an int64
        return torch.from_numpy((t.numpy() & 0xFFFFFFFF).astype(np.uint32).view(np.float32).copy())
    return t.float()


def _configure(model, desc: dict, keys: set[str]) -> dict[str, tuple[LinearBase, str, list[str]]]:
    """Set every linear to FLOAT / W8A16 / W8A8 from the description; swap in biased norms."""
    quant = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, LinearBase):
            continue
        ckpt = checkpoint_names(model, name)
        kinds = {str(desc.get(f"{c}.weight", "FLOAT")).upper() for c in ckpt}
        if len(kinds) > 1:
            raise UserError(f"msmodelslim description: {' and '.join(ckpt)} have different types {sorted(kinds)}; "
                            "the engine fuses them, so quantize them alike")
        kind = kinds.pop()
        if layer.quant_method is not None:
            params.restore_float(layer)
        if kind == "FLOAT":
            continue
        if kind == "W8A16":
            params.install(layer, W8A16LinearMethod())
        elif kind == "W8A8":
            params.install(layer, W8A8LinearMethod(static=True), static_input=True)
        else:
            raise UserError(f"msmodelslim description: {ckpt[0]}.weight is {kind}; qwen-chat loads W8A8, W8A16 "
                            "and FLOAT layers")
        quant[name] = (layer, kind, ckpt)
    for i, block in enumerate(model.transformer.h):
        for ln in ("ln_1", "ln_2"):
            if f"transformer.h.{i}.{ln}.module.weight" in keys:
                old = getattr(block, ln)
                setattr(block, ln, BiasedRMSNorm(old.weight.shape[0], old.eps, old.weight.dtype, old.weight.device))
    return quant


def _finalize(name: str, layer: LinearBase, kind: str, small: dict) -> None:
    """Fill the quantized layer's vectors from the collected full-size tensors (this rank's rows)."""

    def need(tname: str):
        got = {s: t for (n, s), t in small.items() if n == tname}
        if not got:
            raise UserError(f"the msmodelslim checkpoint lacks {name}.{tname} (a {kind} layer); "
                            "re-export it with msmodelslim")
        return got

    def rows(tname: str, param: torch.Tensor, values: dict) -> None:
        for shard, t in values.items():
            for dst, part in params.local_rows(layer, t, shard, f"{name}.{tname}", matrix=False):
                param.data[dst:dst + part.shape[0]].copy_(part)

    dev = layer.weight.device
    if kind == "W8A16":
        scales = {s: _float32(t, "weight_scale") for s, t in need("weight_scale").items()}
        rows("weight_scale", layer.weight_scale, scales)
        offsets = {s: t.float() for (n, s), t in small.items() if n == "weight_offset"}
        if offsets and any(bool(t.abs().max() > 0) for t in offsets.values()):
            layer.weight_offset = torch.nn.Parameter(torch.zeros_like(layer.weight_scale), requires_grad=False)
            rows("weight_offset", layer.weight_offset, offsets)
        return
    scale_in = {s: _float32(t, "input_scale").reshape(-1) for s, t in need("input_scale").items()}
    offset_in = {s: t.float().reshape(-1) for (n, s), t in small.items() if n == "input_offset"}
    vals = list(scale_in.values())
    offs = list(offset_in.values()) or [torch.zeros(1)]
    if any(not torch.equal(v, vals[0]) for v in vals) or any(not torch.equal(o, offs[0]) for o in offs):
        raise UserError(f"{name}: its fused matrices have different input scales or offsets; they share one "
                        "input, so msmodelslim should have calibrated them alike")
    s_in = vals[0][:1]
    layer.input_scale.data.copy_(s_in.to(dev))
    layer.input_offset = torch.nn.Parameter(offs[0][:1].to(dev), requires_grad=False)
    deq = {s: _float32(t, f"{name}.deq_scale").reshape(-1) / s_in for s, t in need("deq_scale").items()}
    rows("deq_scale", layer.weight_scale, deq)
    qbs = {s: t.to(torch.int32).reshape(-1) for s, t in need("quant_bias").items()}
    layer.quant_bias = torch.nn.Parameter(torch.zeros(layer.out_features, dtype=torch.int32, device=dev),
                                          requires_grad=False)
    rows("quant_bias", layer.quant_bias, qbs)
    if isinstance(layer, RowParallelLinear) and layer.tp_rank != 0:
        layer.quant_bias.data.zero_()  # added once: the partial sums are all-reduced
    layer.register_parameter("bias", None)  # folded into quant_bias


def load_msmodelslim(model, model_dir: Path, files: dict[str, list[str]], desc: dict, progress=None,
                     device=None) -> None:
    """Configure `model` from the description, then load every tensor (this rank's slices). `device`: the model
    was built on the meta device; it is allocated there once configured (int8 layers in one byte)."""
    keys = {k for names in files.values() for k in names}
    quant = _configure(model, desc, keys)
    if device is not None:
        materialize(model, device)
    small: dict[str, dict] = {name: {} for name in quant}
    loaded: set[str] = set()
    total = len(files)
    for i, (fname, names) in enumerate(sorted(files.items())):
        if progress:
            progress(i, total, f"loading {fname}")
        prms = dict(model.named_parameters())
        with safe_open(str(Path(model_dir) / fname), "pt") as f:
            for file_key in names:
                if file_key.endswith(".rotary_emb.inv_freq"):
                    continue
                module, tname = file_key.rsplit(".", 1)
                key = file_key
                if module.endswith(".module"):  # anti-outlier norm: ln_X.module.weight / .bias
                    key = f"{module[:-len('.module')]}.{tname}"
                elif module.endswith((".ln_1", ".ln_2")) and f"{module}.module.weight" in keys:
                    continue  # superseded by the smoothed norm
                pname, shard = model.param_for(key)
                emod = pname.rsplit(".", 1)[0]
                if emod in quant:
                    layer, kind, _ = quant[emod]
                    if tname in SMALL:
                        small[emod][(tname, shard)] = f.get_tensor(file_key)
                        continue
                    if tname == "bias" and kind == "W8A8":
                        continue  # folded into quant_bias
                param = prms.get(pname)
                if param is None:
                    if tname in SMALL:
                        continue  # quantization data of a layer the description marks FLOAT
                    raise UserError(f"{fname}: unexpected tensor {file_key}; is this a Qwen v1 checkpoint?")
                getattr(param, "weight_loader", default_loader)(param, f.get_slice(file_key), name=file_key,
                                                                shard_id=shard)
                loaded.add(pname if shard is None else f"{pname}#{shard}")
    for name, (layer, kind, _) in quant.items():
        _finalize(name, layer, kind, small[name])
    _check_complete(model, loaded, quant, model_dir)
    if progress:
        progress(total, total, "weights loaded")


def _check_complete(model, loaded: set[str], quant: dict, model_dir: Path) -> None:
    derived = {"weight_scale", "input_scale", "input_offset", "quant_bias", "weight_offset"}
    missing = []
    for pname, _ in model.named_parameters():
        module, tname = pname.rsplit(".", 1)
        if module in quant and tname in derived:
            continue
        shards = [s for dst, s in model.packed.values() if dst in pname]
        want = {f"{pname}#{s}" for s in shards} if shards else {pname}
        missing += sorted(want - loaded)
    if missing:
        raise UserError(f"{model_dir}: the msmodelslim checkpoint lacks {len(missing)} tensor(s), e.g. "
                        f"{missing[0].split('#')[0]}; re-export it")
