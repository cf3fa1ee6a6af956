"""Builds the model on a device, owns the KV cache, and runs one step plan (on every rank)."""

from __future__ import annotations

import array
import time
from dataclasses import dataclass

import torch

from inference import envs
from inference.config import EngineConfig, ModelConfig
from inference.distributed import get_rank, get_world_size
from inference.engine.cuda_graph import DecodeGraphs
from inference.engine.model_loader import build_model
from inference.engine.staging import HostStaging
from inference.kernels import ROW_GROUP, use_triton
from inference.layers.attention import AttentionMetadata
from inference.layers.rotary import RotaryEmbedding, logn_scale

# A step with prefill whose K/V token reads per layer stay within this runs as graph rows, one per token
# (`ModelRunner.prefill_as_decode_rows`): a row reads its context, a group of ROW_GROUP rows reads its last
# row's. QWEN_CHAT_ROW_PREFILL=0 (`envs`) turns it off.
ROW_PREFILL_READS = 32768


@dataclass
class StepPlan:
    """What every rank computes in one step (pure Python, broadcast from rank 0)."""

    token_ids: list[int]
    positions: list[int]
    q_lens: list[int]
    ctx_lens: list[int]
    block_tables: list[list[int]]
    alphas: list[float]
    num_decodes: int
    no_cached_prefix: list[bool]
    logit_rows: list[int]  # flat token indices whose logits rank 0 needs


def decode_rows(plan: StepPlan, group: int = 1) -> tuple[StepPlan, list[int]]:
    """The step with every token as a decode row of its own: its position, its slot, context length
    position + 1 (causal), its sequence's block table; logits for every row. `group` > 1: each sequence's rows
    padded to a multiple of it (padding rows: context 0, so they write and read nothing). Also each token's
    row."""
    ids, pos, ctx, tables, alphas, where, t = [], [], [], [], [], [], 0
    for q, table, alpha in zip(plan.q_lens, plan.block_tables, plan.alphas):
        where += range(len(ids), len(ids) + q)
        pad = -q % group
        ids += plan.token_ids[t:t + q] + [0] * pad
        pos += plan.positions[t:t + q] + [0] * pad
        ctx += [p + 1 for p in plan.positions[t:t + q]] + [0] * pad
        tables += [table] * (q + pad)
        alphas += [alpha] * (q + pad)
        t += q
    n = len(ids)
    return StepPlan(ids, pos, [1] * n, ctx, tables, alphas, n, [False] * n, list(range(n))), where


@dataclass
class RowStep:
    """A prefill step as decode rows (`ModelRunner.prefill_as_decode_rows`): the row plan, the graphs that
    replay it, each token's row."""

    plan: StepPlan
    graphs: DecodeGraphs
    rows: list[int]


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model_cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
                 progress=None):
        self.cfg, self.model_cfg, self.device, self.dtype = cfg, model_cfg, device, dtype
        self.rank, self.world = get_rank(), get_world_size()
        self.block_size = cfg.block_size
        self.staging = HostStaging(device)
        t0 = time.perf_counter()
        self.model = build_model(cfg, model_cfg, device, dtype, progress)
        self.load_seconds = time.perf_counter() - t0
        # device memory at its highest while loading (weights and the loaders' temporaries), for the bench
        self.load_peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        self.rotary = RotaryEmbedding(model_cfg.rotary_dim, model_cfg.rotary_emb_base, device)
        self.attn_layers = self.model.attention_layers()
        self.num_blocks = 0
        self.graphs = self.row_graphs = None

    # --- KV cache ------------------------------------------------------------------------------------------
    def allocate_kv_cache(self, num_blocks: int) -> None:
        layer = self.attn_layers[0]
        # Stored head-major within a block ([layers, blocks, heads, slots, dim]) so one head's block is one
        # contiguous run for the decode kernel; everything else sees [layers, blocks, slots, heads, dim].
        shape = (len(self.attn_layers), num_blocks, layer.num_heads, self.block_size, layer.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device).transpose(2, 3)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device).transpose(2, 3)
        for i, attn in enumerate(self.attn_layers):
            attn.k_cache, attn.v_cache = self.k_cache[i], self.v_cache[i]
        self.num_blocks = num_blocks

    def read_block(self, block_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_cache[:, block_id].contiguous().cpu(), self.v_cache[:, block_id].contiguous().cpu()

    def write_blocks(self, block_ids: list[int], ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        """Blocks read back from disk (each as read_block gave it) into the cache, one copy per K and V."""
        idx = torch.tensor(block_ids, device=self.device)
        self.k_cache[:, idx] = torch.stack(ks, 1).to(self.device)
        self.v_cache[:, idx] = torch.stack(vs, 1).to(self.device)

    def profile_peak(self) -> int:
        """Peak activation bytes of the largest step (a dummy prefill before the KV cache exists)."""
        n = min(self.cfg.max_num_batched_tokens, 8192)
        plan = StepPlan([0] * n, list(range(n)), [n], [n], [[0] * -(-n // self.block_size)], [1.0], 0, [True],
                        [n - 1])
        mod = torch.cuda if self.device.type == "cuda" else torch.npu
        mod.synchronize()
        mod.reset_peak_memory_stats()
        before = mod.memory_allocated()
        self.run(plan)
        mod.synchronize()
        peak = mod.max_memory_allocated() - before
        mod.empty_cache()  # else the step's freed blocks count as used and again as the peak when sizing the KV
        return peak

    def finish_setup(self, max_model_len: int) -> None:
        """Device-specific fast paths once the KV cache exists (CUDA graphs)."""
        self.rotary.table(1.0, max_model_len)
        if not (self.device.type == "cuda" and use_triton(self.k_cache)):
            return
        if self.cfg.cuda_graphs:
            max_blocks = -(-max_model_len // self.block_size)
            self.graphs = DecodeGraphs(self.model, self.rotary, min(self.cfg.max_num_seqs, 256), max_blocks,
                                       self.device)
            self.graphs.capture()
            if envs.ROW_PREFILL:  # prefill chunks as rows, attending in groups (one pool: never replayed at once)
                self.row_graphs = DecodeGraphs(self.model, self.rotary, min(self.cfg.max_num_batched_tokens, 256),
                                               max_blocks, self.device, grouped_rows=True, pool=self.graphs.pool)
                self.row_graphs.capture()

    # --- one step ------------------------------------------------------------------------------------------
    def block_table_tensor(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(b) for b in tables)
        flat = [x for b in tables for x in (b + [0] * (width - len(b)))]
        return torch.tensor(flat, dtype=torch.int32).view(len(tables), width)

    def prepare(self, plan: StepPlan):
        """The step's device inputs (one host-to-device copy) and attention metadata; logit-row indices."""
        # through array: several times faster than torch.tensor on a list
        host = torch.frombuffer(array.array("q", plan.token_ids + plan.positions), dtype=torch.long)
        bt = self.block_table_tensor(plan.block_tables).long()
        seq_of = torch.repeat_interleave(torch.arange(len(plan.q_lens)), torch.tensor(plan.q_lens))
        pos_cpu = host[len(plan.token_ids):]
        slots = bt[seq_of, pos_cpu // self.block_size] * self.block_size + pos_cpu % self.block_size
        ids_pos, slots, bt_dev, ctx, rows = self.staging.upload(
            [host, slots, bt, torch.tensor(plan.ctx_lens), torch.tensor(plan.logit_rows, dtype=torch.long)])
        ids, pos = ids_pos.view(2, -1).unbind(0)
        meta = AttentionMetadata(
            slot_mapping=slots, block_tables=bt_dev.view(bt.shape), context_lens=ctx,
            q_lens=plan.q_lens, ctx_lens=plan.ctx_lens, num_decodes=plan.num_decodes, max_ctx=max(plan.ctx_lens),
            no_cached_prefix=plan.no_cached_prefix)
        cos, sin = self.rotary.for_tokens(pos, plan.alphas, plan.q_lens, max_pos=max(plan.ctx_lens) - 1)
        logn = None
        if self.model_cfg.use_logn_attn and max(plan.ctx_lens) > self.model_cfg.seq_length:
            logn = logn_scale(pos, self.model_cfg.seq_length)
        return ids, cos, sin, logn, meta, rows

    def _graphable(self, plan: StepPlan, graphs: DecodeGraphs) -> bool:
        """Pure decode, rotary base 1 and no logn scaling: the captured graphs compute exactly this."""
        max_ctx = max(plan.ctx_lens)
        return (plan.num_decodes == len(plan.q_lens) and all(a == 1.0 for a in plan.alphas)
                and not (self.model_cfg.use_logn_attn and max_ctx > self.model_cfg.seq_length)
                and graphs.can_run(len(plan.q_lens), max_ctx))

    def graphable(self, plan: StepPlan) -> bool:
        return self.graphs is not None and self._graphable(plan, self.graphs)

    @torch.inference_mode()
    def run_graph(self, plan: StepPlan, ids_device: torch.Tensor | None = None, graphs=None) -> torch.Tensor:
        graphs, bs = graphs or self.graphs, self.block_size
        slots = [b[p // bs] * bs + p % bs if c else -1 for b, p, c in zip(plan.block_tables, plan.positions,
                                                                            plan.ctx_lens)]
        return graphs.run(plan.token_ids, plan.positions, slots, plan.ctx_lens,
                          self.block_table_tensor(plan.block_tables), ids_device)

    def prefill_as_decode_rows(self, plan: StepPlan) -> RowStep | None:
        """A small step with prefill as one decode row per token: its own position, slot and causal context
        length (position + 1), its sequence's block table. Every row's K/V is stored before any row attends,
        so the decode kernels compute causal attention, and the step replays a CUDA graph instead of the host
        launching a dozen kernels a layer. The grouped graphs (each sequence's rows in groups that read its
        context once a group) where they replay a bucket no larger than rows alone would, or rows alone would
        read too much; else the decode graphs. None: no graphs, too many tokens or context reads."""
        if self.graphs is None or not envs.ROW_PREFILL:
            return None
        n = len(plan.token_ids)
        if n > max(self.graphs.max_bs, self.row_graphs.max_bs if self.row_graphs else 0):
            return None  # more tokens than any graph has rows (a long prompt): no row plans built
        alone = n <= self.graphs.max_bs and sum(plan.positions) + n <= ROW_PREFILL_READS  # reads: position + 1 each
        if self.row_graphs is not None:
            grouped, at = decode_rows(plan, ROW_GROUP)
            ctx = grouped.ctx_lens
            reads = sum(max(ctx[i:i + ROW_GROUP]) for i in range(0, len(ctx), ROW_GROUP))
            if (len(ctx) <= self.row_graphs.max_bs and reads <= ROW_PREFILL_READS
                    and not (alone and self.row_graphs.bucket(len(ctx)) > self.graphs.bucket(n))
                    and self._graphable(grouped, self.row_graphs)):
                return RowStep(grouped, self.row_graphs, at)
        if not alone:
            return None
        rows, where = decode_rows(plan)
        return RowStep(rows, self.graphs, where) if self._graphable(rows, self.graphs) else None

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor | None:
        """Logits [len(plan.logit_rows), vocab] on rank 0, None on other ranks."""
        if self.graphable(plan):
            return self.run_graph(plan)
        step = self.prefill_as_decode_rows(plan) if plan.num_decodes < len(plan.q_lens) else None
        if step is not None:
            logits = self.run_graph(step.plan, graphs=step.graphs)  # a view of the graph's output: copy rows out
            if logits is None:
                return None
            r = [step.rows[i] for i in plan.logit_rows]
            return logits[r[0]:r[-1] + 1].clone() if r and r == list(range(r[0], r[-1] + 1)) else logits[r]
        return self.run_eager(plan)

    @torch.inference_mode()
    def run_eager(self, plan: StepPlan) -> torch.Tensor | None:
        """`run` kernel by kernel (no graph)."""
        ids, cos, sin, logn, meta, rows = self.prepare(plan)
        hidden = self.model(ids, cos, sin, logn, meta)
        if not plan.logit_rows:  # a prompt chunk that samples nothing (its K/V is the step's work): no lm_head
            return torch.empty(0, self.model_cfg.vocab_size, dtype=self.dtype, device=self.device) \
                if self.rank == 0 else None
        return self.model.compute_logits(hidden.index_select(0, rows))
