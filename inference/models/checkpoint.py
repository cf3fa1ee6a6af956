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


FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
INT_DTYPES = {"I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}


def check_dtype(key: str, src, param, file: str) -> None:
    """A float parameter takes a float tensor and an int8 one an int8 tensor: anything else (int8 values
    where the checkpoint is bf16) would load as numbers cast to the wrong type and produce garbage."""
    code = src.get_dtype() if hasattr(src, "get_dtype") else None
    if code is None:
        return
    got = FLOAT_DTYPES.get(code) or INT_DTYPES.get(code) or code.lower()
    want = str(param.dtype).removeprefix("torch.")
    floating = param.dtype.is_floating_point or getattr(param, "float_source", False)  # int8 quantized as read
    if floating == (code in FLOAT_DTYPES) and (floating or got == want):
        return
    kind = "a floating-point tensor (the checkpoint's float dtype)" if floating else want
    raise UserError(f"{file}: tensor {key} is stored as {got} but must be {kind}; the file is damaged or "
                    "mixes in tensors of another (quantized) checkpoint: re-download it")


def materialize(model: torch.nn.Module, device: torch.device) -> None:
    """Allocate every parameter, buffer and tensor attribute still on the meta device on `device` (zeros: the
    checkpoint fills them), keeping each parameter's attributes (its weight_loader)."""
    done: dict[int, torch.Tensor] = {}

    def real(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            new = torch.zeros_like(t, device=device)
            if isinstance(t, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=False)
                new.__dict__.update(t.__dict__)
            done[id(t)] = new
        return done[id(t)]

    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is not None and t.is_meta:
                    store[k] = real(t)
        for k, t in list(vars(mod).items()):
            if isinstance(t, torch.Tensor) and t.is_meta:  # e.g. an attention layer's empty KV cache view
                setattr(mod, k, real(t))


def load_weights(model: torch.nn.Module, model_dir: Path, progress=None, skip=(), device=None) -> None:
    """Fill every parameter of `model`; a missing or unexpected tensor is a UserError naming it. `device`: the
    model was built on the meta device; what is still there is allocated on `device` first (for msmodelslim
    checkpoints, once the description has said which layers are int8)."""
    if not (model_dir / "model.safetensors.index.json").is_file() and not (model_dir / "model.safetensors").is_file():
        from inference.quant.msmodelslim import find_layout, load_msmodelslim  # Ascend layout

        layout = find_layout(model_dir)
        if layout is not None:
            return load_msmodelslim(model, model_dir, *layout, progress=progress, device=device)
    if device is not None:
        materialize(model, device)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    files = shard_map(model_dir)
    total = len(files)
    for i, (fname, names) in enumerate(sorted(files.items())):
        if progress:
            progress(i, total, f"loading {fname}")
        path = model_dir / fname
        with open_shard(path) as f:
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
                check_dtype(key, src, param, path.name)
                getattr(param, "weight_loader", default_loader)(param, src, name=key, shard_id=shard)
                loaded.add(pname if shard is None else f"{pname}#{shard}")
    expected = set()
    for pname, p in params.items():
        if getattr(p, "derived", False):  # filled by another tensor's loader (scales of int8 quantized as read)
            continue
        shards = [s for dst, s in model.packed.values() if dst in pname]
        expected |= {f"{pname}#{s}" for s in shards} if shards else {pname}
    missing = sorted(expected - loaded)
    if missing:
        raise UserError(f"{model_dir}: the checkpoint lacks {len(missing)} tensor(s), e.g. "
                        f"{missing[0].split('#')[0]}; a shard is missing or incomplete, re-download it")
    if progress:
        progress(total, total, "weights loaded")


def open_shard(path: Path):
    """safe_open of one shard; a corrupt header or a truncated file is a UserError that says what to do."""
    try:
        return safe_open(str(path), "pt")
    except Exception as e:
        raise UserError(f"{path} cannot be read ({e}); re-download this shard") from e


def published_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor of a float Qwen v1 checkpoint and its shape, from its config (a ModelConfig)."""
    h, f, v = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size
    shapes = {"transformer.wte.weight": (v, h), "transformer.ln_f.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (h,), p + "attn.c_attn.weight": (3 * h, h), p + "attn.c_attn.bias": (3 * h,),
                       p + "attn.c_proj.weight": (h, h), p + "ln_2.weight": (h,), p + "mlp.w1.weight": (f, h),
                       p + "mlp.w2.weight": (f, h), p + "mlp.c_proj.weight": (h, f)})
    return shapes


def check_float_checkpoint(model_dir: Path, cfg, files: dict[str, list[str]]) -> None:
    """For tools that read a float checkpoint tensor by tensor (quantize), from the shard headers only:
    every shard readable, every published tensor there with its shape and a float dtype, nothing else."""
    want, seen = published_shapes(cfg), set()
    for fname, names in sorted(files.items()):
        path = model_dir / fname
        with open_shard(path) as f:
            for key in names:
                if key.endswith(".rotary_emb.inv_freq"):
                    continue
                if key not in want:
                    raise UserError(f"{fname}: unexpected tensor {key}; is this a Qwen v1 checkpoint?")
                try:
                    src = f.get_slice(key)
                except Exception as e:
                    raise UserError(f"{fname}: tensor {key} cannot be read ({e}); re-download this shard") from e
                if tuple(src.get_shape()) != want[key]:
                    raise UserError(f"tensor {key}: shape {list(src.get_shape())} does not fit the config (expected "
                                    f"{list(want[key])}); config.json and the weights disagree, re-download the "
                                    "checkpoint")
                check_dtype(key, src, torch.empty(0), fname)
                seen.add(key)
    missing = sorted(set(want) - seen)
    if missing:
        raise UserError(f"{model_dir}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}; "
                        "a shard is missing or incomplete, re-download it")
