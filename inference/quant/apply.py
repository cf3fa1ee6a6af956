"""Turn a model's parallel linears into quantized ones.

- `prepare_quantized(model, scheme, model_cfg, device)`: before loading (the model built on the meta device,
  so no float weight of a target is ever allocated). Each target's float weight becomes empty int8
  parameters on `device`. For a quantized checkpoint (config.json `quantize`) their loaders read the
  checkpoint's `weight` / `weight_scale` / `input_scale`; for a float checkpoint (`--quant` on the fly) the
  weight's loader quantizes each float tensor as it is read (per-output-channel scales over the whole row:
  row-parallel shards agree on them across ranks). Peak memory: the int8 model plus one chunk of float rows.
- `quantize_loaded(model, scheme, model_cfg)`: after loading, quantize any target still in float (a layer an
  msmodelslim description keeps FLOAT, with `--quant`).

Targets: attn.c_attn, attn.c_proj, mlp.w2_w1 (checkpoint w2 + w1) and mlp.c_proj of every block, except
the skip list; embeddings and lm_head stay float.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from inference.config import ModelConfig
from inference.errors import UserError
from inference.layers.linear import LinearBase, RowParallelLinear
from inference.quant import params, utils
from inference.quant.methods import W8A8LinearMethod, W8A16LinearMethod


def checkpoint_names(model, module_name: str) -> list[str]:
    """Checkpoint modules behind an engine module (mlp.w2_w1 -> mlp.w2, mlp.w1)."""
    name = module_name + "."
    names = [name.replace(dst, src)[:-1] for src, (dst, _) in getattr(model, "packed", {}).items() if dst in name]
    return names or [module_name]


def linear_targets(model, skip=()) -> list[tuple[str, LinearBase]]:
    """(engine module name, layer) of every quantizable linear not in `skip` (checkpoint-name patterns)."""
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, LinearBase):
            continue
        ckpt = checkpoint_names(model, name)
        if not all(utils.is_target(c) for c in ckpt):
            continue
        skipped = [utils.is_skipped(c, skip) for c in ckpt]
        if any(skipped) and not all(skipped):
            raise UserError(f"skip list {list(skip)}: {' and '.join(ckpt)} are one fused matrix in the engine; "
                            "skip all of them or none")
        if not any(skipped):
            out.append((name, mod))
    return out


def method_for(scheme: str, static: bool = False):
    return W8A16LinearMethod() if scheme == "w8a16" else W8A8LinearMethod(static=static)


def prepare_quantized(model, scheme: str, model_cfg: ModelConfig, device=None) -> None:
    scheme = utils.check_scheme(scheme)
    if model_cfg.quantize is None:  # float checkpoint: quantized as read
        for _, layer in linear_targets(model, model_cfg.quant_skip or utils.DEFAULT_SKIP[scheme]):
            params.install(layer, method_for(scheme), device=device, float_source=True)
        return
    stored = str(model_cfg.quantize).lower()
    if stored not in utils.SCHEMES:
        raise UserError(f"config.json: quantize {model_cfg.quantize!r} is not supported; qwen-chat loads w8a16 "
                        "and w8a8 checkpoints")
    if scheme != stored:
        raise UserError(f"--quant {scheme}: this checkpoint is already quantized ({stored}); leave --quant out "
                        "(or point --model at the float checkpoint)")
    if model_cfg.quant_activation not in ("dynamic", "static"):
        raise UserError(f"config.json: quant_activation {model_cfg.quant_activation!r} must be dynamic or static")
    static = scheme == "w8a8" and model_cfg.quant_activation == "static"
    for _, layer in linear_targets(model, model_cfg.quant_skip):
        params.install(layer, method_for(scheme, static), static_input=static, device=device)


@torch.no_grad()
def quantize_layer(layer: LinearBase, scheme: str) -> None:
    """Quantize one loaded float layer in place (weight-only scales; W8A8 activations dynamic)."""
    w = layer.weight.data
    absmax = utils.weight_absmax(w)
    if isinstance(layer, RowParallelLinear) and layer.tp_size > 1 and dist.is_initialized():
        dist.all_reduce(absmax, op=dist.ReduceOp.MAX)  # each rank holds a slice of every row
    q, scale = utils.quantize_weight(w, absmax)
    params.set_quantized(layer, q, scale, method_for(scheme))
    del w


def quantize_loaded(model, scheme: str, model_cfg: ModelConfig) -> None:
    scheme = utils.check_scheme(scheme)
    skip = model_cfg.quant_skip or utils.DEFAULT_SKIP[scheme]
    device = None
    for _, layer in linear_targets(model, skip):
        if layer.quant_method is not None:  # already quantized (a quantized checkpoint)
            continue
        device = layer.weight.device
        quantize_layer(layer, scheme)
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
