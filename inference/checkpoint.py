"""Load safetensors weights shard by shard into a model; each parameter's loader takes only its slice."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from inference.errors import UserError


def shard_map(model_dir: Path) -> dict[str, list[str]]:
    """file -> tensor names, from model.safetensors.index.json or a single model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index} is not a valid safetensors index ({e}); re-download it") from e
        files: dict[str, list[str]] = defaultdict(list)
        for name, fname in weight_map.items():
            files[fname].append(name)
        for fname in files:
            if not (model_dir / fname).is_file():
                raise UserError(f"{model_dir / fname} (listed in the index) is missing; re-download the checkpoint")
        return dict(files)
    single = model_dir / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return {"model.safetensors": list(f.keys())}
    if any(model_dir.glob("*.bin")):
        raise UserError(f"{model_dir} has PyTorch .bin weights; qwen-chat loads .safetensors (convert them first)")
    raise UserError(f"{model_dir}: no model.safetensors.index.json or model.safetensors; "
                    "is this a checkpoint directory?")


def default_loader(param, src, name="", shard_id=None) -> None:
    shape = tuple(src.get_shape())
    if shape != tuple(param.shape):
        raise UserError(f"tensor {name}: shape {list(shape)} does not fit the config (expected "
                        f"{list(param.shape)}); config.json and the weights disagree, re-download the checkpoint")
    param.data.copy_(src[:])


def load_weights(model: torch.nn.Module, model_dir: Path, progress=None, skip=()) -> None:
    """Fill every parameter of `model`; a missing or unexpected tensor is a UserError naming it."""
    if not (model_dir / "model.safetensors.index.json").is_file() and not (model_dir / "model.safetensors").is_file():
        from inference.quant.msmodelslim import find_layout, load_msmodelslim  # Ascend layout

        layout = find_layout(model_dir)
        if layout is not None:
            return load_msmodelslim(model, model_dir, *layout, progress=progress)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    files = shard_map(model_dir)
    total = len(files)
    for i, (fname, names) in enumerate(sorted(files.items())):
        if progress:
            progress(i, total, f"loading {fname}")
        path = model_dir / fname
        try:
            handle = safe_open(str(path), "pt")
        except Exception as e:  # corrupt header, truncated file
            raise UserError(f"{path} cannot be read ({e}); re-download this shard") from e
        with handle as f:
            for key in names:
                if key.endswith(".rotary_emb.inv_freq") or any(key.startswith(s) for s in skip):
                    continue
                pname, shard = model.param_for(key)
                param = params.get(pname)
                if param is None:
                    raise UserError(f"{path.name}: unexpected tensor {key}; is this a Qwen v1 checkpoint?")
                try:
                    src = f.get_slice(key)
                except Exception as e:
                    raise UserError(f"{path.name}: tensor {key} cannot be read ({e}); re-download this shard") from e
                getattr(param, "weight_loader", default_loader)(param, src, name=key, shard_id=shard)
                loaded.add(pname if shard is None else f"{pname}#{shard}")
    expected = set()
    for pname in params:
        shards = [s for dst, s in model.packed.values() if dst in pname]
        expected |= {f"{pname}#{s}" for s in shards} if shards else {pname}
    missing = sorted(expected - loaded)
    if missing:
        raise UserError(f"{model_dir}: the checkpoint lacks {len(missing)} tensor(s), e.g. "
                        f"{missing[0].split('#')[0]}; a shard is missing or incomplete, re-download it")
    if progress:
        progress(total, total, "weights loaded")

