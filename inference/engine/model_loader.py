"""Build the model on its device with one copy of the weights: never a float copy of what gets quantized.

The model is built on the meta device (no memory). With a quantization scheme, every target linear gets its
int8 parameters on the device first (`quant.apply.prepare_quantized`); everything else is then allocated on
the device and filled from the checkpoint shard by shard, a float tensor of an int8 layer quantized as it is
read. Peak memory: on the device the int8 model plus one chunk of float rows; on the host one shard (mapped)
plus one chunk of rows. Random weights (benchmarks: `extra={"random_weights": True}`) go the same way: each
int8 layer's tensors are drawn in float, one tensor at a time, and quantized by the same loader.
"""

from __future__ import annotations

from pathlib import Path

import torch

from inference.config import EngineConfig, ModelConfig
from inference.models.checkpoint import load_weights, materialize
from inference.models.qwen import QWenLMHeadModel

NORMS = ("ln_1.weight", "ln_2.weight", "ln_f.weight")


def build_model(cfg: EngineConfig, model_cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
                progress=None) -> QWenLMHeadModel:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = QWenLMHeadModel(model_cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    scheme = cfg.quant or model_cfg.quantize
    if scheme:
        from inference.quant.apply import prepare_quantized  # optional feature

        prepare_quantized(model, scheme, model_cfg, device)
    if cfg.extra.get("random_weights"):
        materialize(model, device)
        init_random(model, seed=int(cfg.extra.get("seed", 0)))
    else:
        load_weights(model, Path(cfg.model), progress=progress, device=device)
    if cfg.quant and not model_cfg.quantize:
        from inference.quant.apply import quantize_loaded

        quantize_loaded(model, cfg.quant, model_cfg)  # layers an msmodelslim description keeps in float
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the loaders' temporaries: free memory counts toward the KV cache
    return model


@torch.no_grad()
def init_random(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes (for benchmarks): N(0, 0.02), norms at 1. A linear quantized as read
    draws each of its checkpoint tensors in float on the device and quantizes it (one tensor at a time)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(NORMS):
            p.fill_(1.0)
        elif p.is_floating_point() and not getattr(p, "derived", False):
            p.normal_(0.0, 0.02, generator=g)
    for name, layer in model.named_modules():
        weight = getattr(layer, "weight", None)
        if not getattr(weight, "float_source", False):
            continue
        from inference.quant.apply import checkpoint_names
        from inference.quant.params import full_rows

        for ckpt in checkpoint_names(model, name):
            key = ckpt + ".weight"
            shard = model.param_for(key)[1]
            src = torch.empty(full_rows(layer, shard), layer.full_in, dtype=layer.float_dtype, device=weight.device)
            weight.weight_loader(weight, src.normal_(0.0, 0.02, generator=g), name=key, shard_id=shard)
            del src
