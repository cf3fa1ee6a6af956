"""Flags shared by every command that runs the engine, and their translation to EngineConfig."""

from __future__ import annotations

import argparse

from inference import envs
from inference.config import EngineConfig, default_kv_disk_dir
from inference.model_path import resolve_model


def add_engine_args(p: argparse.ArgumentParser, kv_disk_default: bool = False) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default=envs.MODEL,
                   help="checkpoint directory, an alias (7b, 14b, 72b, 7b-chat, ...) or demo")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | npu")
    g.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (1, 2, 4, 8); launches torchrun")
    g.add_argument("--quant", default=None, choices=["w8a16", "w8a8"], help="quantize weights at load time")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache size in blocks (default: from memory)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=2048)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--no-cuda-graphs", action="store_true")
    g.add_argument("--kv-disk-dir", default=default_kv_disk_dir() if kv_disk_default else None,
                   help="disk tier of the prefix cache")
    g.add_argument("--no-kv-disk", action="store_true", help="turn the disk tier off")
    g.add_argument("--kv-disk-max-gb", type=float, default=8.0)
    g.add_argument("--cpu-threads", type=int, default=None, metavar="N",
                   help="torch CPU threads of the engine (default: $OMP_NUM_THREADS, else the usable cores less "
                        "one, shared among the ranks)")


def engine_config_from_args(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=str(resolve_model(a.model)), device=a.device, dtype=a.dtype, tp=a.tp, block_size=a.block_size,
        num_kv_blocks=a.num_kv_blocks, memory_utilization=a.gpu_memory_utilization,
        cpu_kv_cache_gb=a.cpu_kv_cache_gb, max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens, max_model_len=a.max_model_len,
        enable_prefix_caching=not a.no_prefix_caching,
        kv_disk_dir=None if a.no_kv_disk else a.kv_disk_dir, kv_disk_max_gb=a.kv_disk_max_gb,
        quant=a.quant, cuda_graphs=not a.no_cuda_graphs, cpu_threads=a.cpu_threads)
