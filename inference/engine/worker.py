"""One tensor-parallel rank's share of the engine: its slice of the model on its device, its KV cache and
its disk tier (vLLM's worker).

Rank 0's `LLMEngine` holds a `Worker` and drives it: it schedules, samples, and broadcasts each op before
running it on its own worker. Every other rank runs `Worker.loop`, which follows those ops until rank 0
sends "stop": `step` (a `StepPlan`), `ahead` (a decode step launched from the previous step's tokens,
lookahead.py), `kv_save`/`kv_load` (disk tier, kv_disk.py). `start_engine` (llm_engine.py) decides which.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from pathlib import Path

import torch

from inference import distributed as dist
from inference.config import EngineConfig, ModelConfig, check_tp
from inference.engine import memory
from inference.engine.device import cpu_threads, resolve_device, resolve_dtype
from inference.engine.kv_disk import DiskTier, open_tier
from inference.engine.lookahead import run_ahead_step
from inference.engine.model_runner import ModelRunner, StepPlan
from inference.engine.warmup import warm_up_engine
from inference.errors import UserError
from inference.model_path import demo_dir
from inference.tokenizer import QwenTokenizer


def fingerprint(model_dir: Path) -> bytes:
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in sorted(model_dir.glob("*.safetensors*")):
        h.update(p.name.encode() + str(p.stat().st_size).encode())
    return h.digest()[:16]


class Worker:
    """The setup every rank shares: model load, KV cache sized alike on every rank, disk tier."""

    def __init__(self, cfg: EngineConfig, progress=None):
        self.cfg = cfg
        torch.set_num_threads(cpu_threads(cfg.cpu_threads))  # before loading: weight conversion uses them too
        model_dir = Path(cfg.model)
        if model_dir == demo_dir():  # built on first use (and brought up to date)
            from inference.models.demo import ensure_demo

            ensure_demo(model_dir)
        self.model_config = m = ModelConfig.from_dir(model_dir)
        check_tp(m, cfg.tp)
        if dist.under_torchrun() and dist.get_world_size() != cfg.tp:
            raise UserError(f"--tp {cfg.tp} but torchrun started {dist.get_world_size()} ranks; make them equal")
        self.device = resolve_device(cfg)
        dist.init(self.device.type)
        self.rank = dist.get_rank()
        self.dtype = resolve_dtype(cfg, m, self.device)
        self.tokenizer = QwenTokenizer.from_dir(model_dir)  # rank 0's; read on every rank before the weights
        self.max_model_len = cfg.max_model_len or min(4 * m.seq_length, 32768)
        element = torch.empty(0, dtype=self.dtype).element_size()
        block_bytes = memory.kv_block_bytes(m, cfg, element)
        memory.check_fits(m, cfg, self.device, element, block_bytes)
        self.runner = ModelRunner(cfg, m, self.device, self.dtype, progress=progress)
        self.activation_peak = self.runner.profile_peak() if self.device.type != "cpu" and not cfg.num_kv_blocks else 0
        self.num_blocks = dist.min_across_ranks(memory.num_kv_blocks(cfg, self.device, block_bytes,
                                                                     self.activation_peak))
        self.runner.allocate_kv_cache(self.num_blocks)
        self.runner.finish_setup(self.max_model_len)
        self.warmup_s = warm_up_engine(self.runner, self.num_blocks, self.max_model_len, progress)
        # what a KV block's hash depends on besides its tokens (prefix cache, disk tier)
        self.salt = fingerprint(model_dir) + f"|{self.dtype}|tp{cfg.tp}|{cfg.quant or m.quantize}|".encode()
        gc.freeze()  # the loaded model's objects are permanent: keep them out of collection pauses
        self.kv_disk: DiskTier | None = None  # disk tier of the prefix cache (every rank has its own files)
        if cfg.kv_disk_dir and cfg.enable_prefix_caching:
            self.kv_disk = open_tier(cfg.kv_disk_dir, model_dir, self.salt, cfg.block_size, cfg.kv_disk_max_gb,
                                     self.runner, self.rank)

    def pause_disk_writes(self, plan: StepPlan):
        """While a step with a prefill runs, the disk tier's writer starts no new file: a new turn's first
        token does not wait on disk writes."""
        if self.kv_disk is None:
            return contextlib.nullcontext()
        return self.kv_disk.pause_writes(plan.num_decodes < len(plan.q_lens))

    def loop(self) -> None:
        """Ranks > 0: follow rank 0's broadcast ops until it sends "stop"; then close and return."""
        while True:
            op, payload = dist.broadcast_object(None)
            if op == "step":
                with self.pause_disk_writes(payload):
                    self.runner.run(payload)
            elif op == "ahead":
                run_ahead_step(self.runner, payload)
            elif op in ("kv_save", "kv_load"):
                self.kv_disk.handle(op, payload)
            elif op == "stop":
                break
        self.close()
        dist.shutdown()

    def close(self) -> None:
        """Waits for the disk tier's writer thread."""
        if self.kv_disk is not None:
            self.kv_disk.close()
