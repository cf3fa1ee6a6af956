"""How much memory the weights need and how many KV blocks fit."""

from __future__ import annotations

import os

import torch

from inference.config import EngineConfig, ModelConfig
from inference.errors import UserError


def weight_bytes(m: ModelConfig, element_size: int, tp: int, quant: str | None = None) -> int:
    """Weights per rank; int8 schemes store the block linears in one byte plus a float32 scale per row, except
    the skip list's (w8a8: mlp.c_proj), which stay float like embeddings, lm_head and norms."""
    h, f, v, n = m.hidden_size, m.ffn_size, m.vocab_size, m.num_hidden_layers
    floats = 2 * v * h + n * (3 * h + 2 * h) + h
    shapes = {"attn.c_attn": (3 * h, h), "attn.c_proj": (h, h), "mlp.w2": (f, h), "mlp.w1": (f, h),
              "mlp.c_proj": (h, f)}
    if not quant:
        return (floats + n * sum(r * c for r, c in shapes.values())) * element_size // tp
    from inference.quant import utils

    skip = m.quant_skip if m.quantize else (m.quant_skip or utils.DEFAULT_SKIP[str(quant).lower()])
    linear = 0
    for i in range(n):
        for mod, (rows, cols) in shapes.items():
            skipped = utils.is_skipped(f"transformer.h.{i}.{mod}", skip or ())
            linear += rows * cols * element_size if skipped else rows * cols + 4 * rows
    return (floats * element_size + linear) // tp


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "npu":
        return torch.npu.mem_get_info(device)[0]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(m: ModelConfig, cfg: EngineConfig, device: torch.device, element_size: int,
               kv_block_bytes: int) -> None:
    """Refuse before loading when weights per rank plus a minimum KV cache cannot fit."""
    need = weight_bytes(m, element_size, cfg.tp, cfg.quant or m.quantize) + 16 * kv_block_bytes
    have = available_bytes(device)
    if device.type != "cpu":
        have = int(have * cfg.memory_utilization)
    if need > have:
        gib = 1 << 30
        raise UserError(
            f"the model needs about {need / gib:.1f} GiB per rank (weights + a minimal KV cache) but only "
            f"{have / gib:.1f} GiB is free on {device}; use more ranks (--tp), --quant w8a16, or a smaller dtype")


def kv_block_bytes(m: ModelConfig, cfg: EngineConfig, element_size: int) -> int:
    heads = m.num_attention_heads // cfg.tp
    return 2 * m.num_hidden_layers * cfg.block_size * heads * m.head_dim * element_size


def num_kv_blocks(cfg: EngineConfig, device: torch.device, block_bytes: int, peak_activation: int) -> int:
    """From --num-kv-blocks, else the CPU budget, else free device memory after weights and activations."""
    if cfg.num_kv_blocks:
        return cfg.num_kv_blocks
    if device.type == "cpu":
        return max(16, int(cfg.cpu_kv_cache_gb * (1 << 30)) // block_bytes)
    free, total = (torch.cuda if device.type == "cuda" else torch.npu).mem_get_info(device)
    budget = int(total * cfg.memory_utilization) - (total - free) - peak_activation
    if budget < 16 * block_bytes:
        raise UserError(f"no room for the KV cache on {device}: raise --gpu-memory-utilization, use more ranks "
                        "(--tp) or --quant w8a16")
    return budget // block_bytes
