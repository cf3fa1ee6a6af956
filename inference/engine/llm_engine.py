"""The engine: requests in, tokens out, one `step()` at a time. Rank 0 schedules and samples; other
ranks run `worker_loop` and follow the plans rank 0 broadcasts."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import sys
import time
from pathlib import Path

import torch

from inference import distributed as dist
from inference.config import EngineConfig, ModelConfig, SamplingParams, check_tp
from inference.engine import memory
from inference.engine.block_manager import BlockManager
from inference.engine.device import cpu_threads, resolve_device, resolve_dtype
from inference.engine.lookahead import Lookahead, follow
from inference.engine.model_runner import ModelRunner, StepPlan
from inference.engine.outputs import RequestOutput, Usage
from inference.engine.scheduler import Scheduler, is_decode
from inference.engine.sequence import Sequence
from inference.errors import PromptTooLong, UserError
from inference.layers.sampler import Sampler, prompt_logprobs, sampled_logprobs
from inference.model_path import demo_dir
from inference.tokenizer import QwenTokenizer


def fingerprint(model_dir: Path) -> bytes:
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in sorted(model_dir.glob("*.safetensors*")):
        h.update(p.name.encode() + str(p.stat().st_size).encode())
    return h.digest()[:16]


class LLMEngine:
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
        self.tokenizer = QwenTokenizer.from_dir(model_dir)
        self.max_model_len = cfg.max_model_len or min(4 * m.seq_length, 32768)
        element = torch.empty(0, dtype=self.dtype).element_size()
        block_bytes = memory.kv_block_bytes(m, cfg, element)
        memory.check_fits(m, cfg, self.device, element, block_bytes)
        self.runner = ModelRunner(cfg, m, self.device, self.dtype, progress=progress if self.rank == 0 else None)
        peak = self.runner.profile_peak() if self.device.type != "cpu" and not cfg.num_kv_blocks else 0
        num_blocks = dist.min_across_ranks(memory.num_kv_blocks(cfg, self.device, block_bytes, peak))
        self.runner.allocate_kv_cache(num_blocks)
        self.runner.finish_setup(self.max_model_len)
        salt = fingerprint(model_dir) + f"|{self.dtype}|tp{cfg.tp}|{cfg.quant or m.quantize}|".encode()
        gc.freeze()  # the loaded model's objects are permanent: keep them out of collection pauses
        self.lookahead = Lookahead(self) if self.runner.graphs is not None else None
        self.kv_disk = None  # disk tier of the prefix cache (every rank has its own files)
        if cfg.kv_disk_dir and cfg.enable_prefix_caching:
            from inference.engine.kv_disk import open_tier

            self.kv_disk = open_tier(cfg.kv_disk_dir, model_dir, salt, cfg.block_size, cfg.kv_disk_max_gb,
                                     self.runner, self.rank)
        if self.rank != 0:
            self.worker_loop()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # skip interpreter teardown: gloo threads can abort it after the group is gone
        self.block_manager = BlockManager(num_blocks, cfg.block_size, salt, cfg.enable_prefix_caching)
        if self.kv_disk is not None:
            self.kv_disk.bm = self.block_manager
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_num_batched_tokens,
                                   loader=self.kv_disk.load if self.kv_disk is not None else None)
        self.sampler = Sampler(self.device)
        self.seqs: dict[str, Sequence] = {}
        self.cancelled: list[RequestOutput] = []
        self._ids = itertools.count()

    # --- requests ------------------------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = params or SamplingParams()
        prompt_ids = list(prompt_ids)
        vocab = self.model_config.vocab_size
        if not prompt_ids:
            raise UserError("the prompt is empty: give at least one token")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt_ids):
            raise UserError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens but the context window is "
                            f"{self.max_model_len}; shorten it (or start a new session)")
        total = min(len(prompt_ids) + params.max_new_tokens, self.max_model_len)
        if self.block_manager.blocks_needed(total) > self.block_manager.num_blocks:
            raise UserError(f"prompt plus max_new_tokens ({total} tokens) needs more KV blocks than the cache has "
                            f"({self.block_manager.num_blocks} x {self.cfg.block_size}); lower max_new_tokens or "
                            "give the cache more memory")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.seqs:
            raise UserError(f"request id {rid!r} is already running")
        seq = Sequence(rid, prompt_ids, params, ntk_alpha=self.model_config.ntk_alpha(len(prompt_ids)))
        self.seqs[rid] = seq
        self.scheduler.add(seq)
        return rid

    def abort(self, request_id: str) -> bool:
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        self.sampler.forget(request_id)
        seq.finish_reason = "cancelled"
        if self.kv_disk is not None:
            self.kv_disk.due = True
        self.cancelled.append(RequestOutput(request_id, [], True, "cancelled", self._usage(seq)))
        return True

    def has_unfinished(self) -> bool:
        return bool(self.seqs) or bool(self.cancelled) or (self.kv_disk is not None and self.kv_disk.due)

    # --- one step --------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, self.cancelled = self.cancelled, []
        if self.kv_disk is not None and self.kv_disk.due:  # finished requests' blocks, before any eviction
            self.kv_disk.flush()
        batch = self.scheduler.schedule()
        if not batch:
            if self.lookahead:
                self.lookahead.pending = None
            return outputs
        plan, last_rows = self._plan(batch)
        t0 = time.perf_counter()
        with self._quiet_disk(plan):  # a prefill's first token does not wait on disk writes
            logits = self.lookahead.take(batch) if self.lookahead else None
            if logits is None:
                dist.broadcast_object(("step", plan))
                logits = self.runner.run(plan)
            tokens = self.lookahead.tokens(batch, plan, logits) if self.lookahead else None
            outputs += self._postprocess(batch, plan, logits, last_rows, tokens)
        if self.kv_disk is not None:  # the disk tier weighs loading against this measured prefill cost
            self.kv_disk.note_prefill(len(plan.token_ids) - plan.num_decodes, time.perf_counter() - t0)
        return outputs

    def _quiet_disk(self, plan: StepPlan):
        return self.kv_disk.quiet(plan.num_decodes < len(plan.q_lens)) if self.kv_disk is not None \
            else contextlib.nullcontext()

    def _plan(self, batch: list[tuple[Sequence, int]]):
        ids, pos, rows, last_rows = [], [], [], []
        for seq, n in batch:
            start = seq.num_computed
            base = len(ids)
            ids += seq.token_ids[start:start + n]
            pos += range(start, start + n)
            if seq.params.all_rows:
                rows += [base + i for i in range(n) if start + i < seq.num_prompt_tokens]
            if start + n == len(seq):
                if not rows or rows[-1] != base + n - 1:
                    rows.append(base + n - 1)
                last_rows.append(len(rows) - 1)
            else:
                last_rows.append(None)
        num_decodes = sum(1 for seq, n in batch if is_decode(seq, n))
        plan = StepPlan(ids, pos, [n for _, n in batch], [s.num_computed + n for s, n in batch],
                        [list(s.block_table) for s, _ in batch], [s.ntk_alpha for s, _ in batch], num_decodes,
                        [s.num_computed == 0 for s, _ in batch], rows)
        return plan, last_rows

    def _postprocess(self, batch, plan: StepPlan, logits: torch.Tensor, last_rows, tokens=None
                     ) -> list[RequestOutput]:
        now = time.perf_counter()
        row_of = {r: i for i, r in enumerate(plan.logit_rows)}
        sample_seqs, sample_rows, base = [], [], 0
        for (seq, n), last in zip(batch, last_rows):
            start = seq.num_computed
            seq.num_computed += n
            new = self.block_manager.commit(seq)
            if self.kv_disk is not None and new:
                self.kv_disk.note_blocks(new)
            if seq.params.all_rows:
                idx = [row_of[base + i] for i in range(n) if start + i < seq.num_prompt_tokens]
                if seq.params.logits == "all":
                    seq.logits_parts.append(logits[idx].float().cpu())
                if seq.params.prompt_logprobs is not None:
                    seq.set_prompt_logprobs(start, prompt_logprobs(
                        logits[idx], seq.token_ids, start, seq.num_prompt_tokens, seq.params.prompt_logprobs))
            if last is not None:
                sample_seqs.append(seq)
                sample_rows.append(last)
            base += n
        outputs = []
        if not sample_seqs:
            return outputs
        if tokens is None:  # (indexing by a list uploads it and waits for the GPU: not on the lookahead path)
            rows = logits if sample_rows == list(range(logits.shape[0])) else logits[sample_rows]
            tokens = self.sampler(rows, [s.params for s in sample_seqs], [s.token_ids for s in sample_seqs],
                                  [s.request_id for s in sample_seqs])
        lps = sampled_logprobs(logits, sample_rows, [s.params.logprobs for s in sample_seqs], tokens)
        for i, (seq, tok, row) in enumerate(zip(sample_seqs, tokens, sample_rows)):
            prompt_lps = None
            if seq.first_token_time is None:
                seq.first_token_time = now
                if seq.params.logits == "last":
                    seq.logits_parts = [logits[row].float().cpu()]
                if seq.params.prompt_logprobs is not None:
                    prompt_lps = seq.prompt_lps or [None] * seq.num_prompt_tokens
            seq.last_token_time = now
            reason = None
            if tok in seq.params.stop_token_ids and not seq.params.ignore_eos:
                reason = "stop"
            else:
                seq.token_ids.append(tok)
                if seq.num_completion >= seq.params.max_new_tokens or len(seq) >= self.max_model_len:
                    reason = "length"
            new_ids = seq.completion_ids[seq.emitted:]
            seq.emitted = seq.num_completion
            out = RequestOutput(seq.request_id, new_ids, reason is not None, reason, prompt_logprobs=prompt_lps)
            if i in lps and new_ids:
                out.logprobs = [lps[i]]
            if reason is not None:
                seq.finish_reason = reason
                self._finish(seq, out)
            outputs.append(out)
        return outputs

    def _finish(self, seq: Sequence, out: RequestOutput) -> None:
        self.scheduler.remove(seq)
        self.seqs.pop(seq.request_id, None)
        self.sampler.forget(seq.request_id)
        if self.kv_disk is not None:
            self.kv_disk.due = True
        out.usage = self._usage(seq)
        if seq.params.logits == "last":
            out.logits = seq.logits_parts[0]
        elif seq.params.logits == "all":
            out.logits = torch.cat(seq.logits_parts)

    def _usage(self, seq: Sequence) -> Usage:
        ttft = (seq.first_token_time - seq.arrival) * 1000 if seq.first_token_time else 0.0
        span = (seq.last_token_time or 0) - (seq.first_token_time or 0)
        rate = (seq.num_completion - 1) / span if seq.num_completion > 1 and span > 0 else 0.0
        return Usage(seq.num_prompt_tokens, seq.num_cached_tokens, seq.num_completion, round(ttft, 3), round(rate, 2))

    # --- conveniences ------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[list[int]]:
        return self._run(prompts, params)[0]

    def generate_with_logits(self, prompts: list[list[int]], params: SamplingParams
                             ) -> tuple[list[list[int]], torch.Tensor]:
        """`generate`, plus each request's logits as its finishing output holds them (`params.logits`:
        "last" gives the last step's row of each, stacked)."""
        tokens, logits = self._run(prompts, params)
        return tokens, torch.stack(logits)

    def _run(self, prompts, params) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Every prompt to completion (rank 0): the new tokens and the finishing output's logits of each."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        tokens: dict[str, list[int]] = {r: [] for r in rids}
        logits: dict[str, torch.Tensor | None] = {}
        while self.has_unfinished():
            for out in self.step():
                tokens[out.request_id] += out.new_token_ids
                if out.finished:
                    logits[out.request_id] = out.logits
        return [tokens[r] for r in rids], [logits.get(r) for r in rids]

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "preemptions": self.scheduler.num_preemptions, "cpu_threads": torch.get_num_threads(),
                **self.block_manager.stats(),
                **(self.kv_disk.stats() if self.kv_disk is not None else {})}

    def keepalive(self) -> None:
        """Called when idle so waiting ranks do not time out."""
        dist.broadcast_object(("noop", None))

    def worker_loop(self) -> None:
        while True:
            op, payload = dist.broadcast_object(None)
            if op == "step":
                with self._quiet_disk(payload):
                    self.runner.run(payload)
            elif op == "ahead":
                follow(self.runner, payload)
            elif op in ("kv_save", "kv_load"):
                self.kv_disk.handle(op, payload)
            elif op == "stop":
                break
        if self.kv_disk is not None:
            self.kv_disk.close()
        dist.shutdown()

    def shutdown(self) -> None:
        tier = getattr(self, "kv_disk", None)
        if tier is not None and getattr(self, "rank", 0) == 0:
            try:
                tier.flush()  # blocks of the last finished requests
            finally:
                tier.close()  # waits for the writer thread
        if getattr(self, "rank", 0) == 0 and dist.get_world_size() > 1:
            dist.broadcast_object(("stop", None))
            dist.shutdown()
