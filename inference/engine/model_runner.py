"""Builds the model on a device, owns the KV cache, and runs one step plan (on every rank)."""

from __future__ import annotations

import array
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inference import envs
from inference.config import EngineConfig, ModelConfig
from inference.distributed import get_rank, get_world_size
from inference.engine.cuda_graph import DecodeGraphs
from inference.engine.staging import HostStaging
from inference.kernels import use_triton
from inference.layers.attention import AttentionMetadata
from inference.layers.rotary import RotaryEmbedding, logn_scale
from inference.models.checkpoint import load_weights
from inference.models.qwen import QWenLMHeadModel

# A step with prefill whose tokens' summed context lengths (K/V token reads per layer) stay within this runs
# as decode-graph rows, one per token (`ModelRunner.as_rows`); QWEN_CHAT_ROW_PREFILL=0 (`envs`) turns it off.
ROW_PREFILL_READS = 32768


@torch.no_grad()
def init_random(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes (for benchmarks): N(0, 0.02), norms at 1."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            p.fill_(1.0)
        elif p.is_floating_point():
            p.normal_(0.0, 0.02, generator=g)


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
    prefix_free: list[bool]
    logit_rows: list[int]  # flat token indices whose logits rank 0 needs


def decode_rows(plan: StepPlan) -> StepPlan:
    """The step with every token as a decode row of its own: its position, its slot, context length
    position + 1 (causal), its sequence's block table; logits for every row."""
    n = len(plan.token_ids)
    per_token = lambda xs: [x for x, q in zip(xs, plan.q_lens) for _ in range(q)]  # noqa: E731
    return StepPlan(plan.token_ids, plan.positions, [1] * n, [p + 1 for p in plan.positions],
                    per_token(plan.block_tables), per_token(plan.alphas), n, [False] * n, list(range(n)))


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model_cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
                 progress=None):
        self.cfg, self.model_cfg, self.device, self.dtype = cfg, model_cfg, device, dtype
        self.rank, self.world = get_rank(), get_world_size()
        self.block_size = cfg.block_size
        self.staging = HostStaging(device)
        t0 = time.perf_counter()
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                self.model = QWenLMHeadModel(model_cfg).eval()
        finally:
            torch.set_default_dtype(prev)
        if cfg.quant or model_cfg.quantize:
            from inference.quant.apply import prepare_quantized  # optional feature

            prepare_quantized(self.model, cfg.quant or model_cfg.quantize, model_cfg)
        if cfg.extra.get("random_weights"):
            init_random(self.model, seed=int(cfg.extra.get("seed", 0)))
        else:
            load_weights(self.model, Path(cfg.model), progress=progress)
        if cfg.quant and not model_cfg.quantize:
            from inference.quant.apply import quantize_loaded

            quantize_loaded(self.model, cfg.quant, model_cfg)
        self.load_seconds = time.perf_counter() - t0
        self.rotary = RotaryEmbedding(model_cfg.rotary_dim, model_cfg.rotary_emb_base, device)
        self.attn_layers = self.model.attention_layers()
        self.num_blocks = 0
        self.graphs = None

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
        return mod.max_memory_allocated() - before

    def finish_setup(self, max_model_len: int) -> None:
        """Device-specific fast paths once the KV cache exists (Triton decode kernel, CUDA graphs)."""
        self.rotary.table(1.0, max_model_len)
        if not (self.device.type == "cuda" and use_triton(self.k_cache)):
            return
        from inference.kernels.paged_attention import paged_decode_attention

        for attn in self.attn_layers:
            attn.decode_kernel = paged_decode_attention
        if self.cfg.cuda_graphs:
            max_blocks = -(-max_model_len // self.block_size)
            self.graphs = DecodeGraphs(self.model, self.rotary, min(self.cfg.max_num_seqs, 256), max_blocks,
                                       self.device)
            self.graphs.capture()

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
            prefix_free=plan.prefix_free)
        cos, sin = self.rotary.for_tokens(pos, plan.alphas, plan.q_lens, max_pos=max(plan.ctx_lens) - 1)
        logn = None
        if self.model_cfg.use_logn_attn and max(plan.ctx_lens) > self.model_cfg.seq_length:
            logn = logn_scale(pos, self.model_cfg.seq_length)
        return ids, cos, sin, logn, meta, rows

    def _graphable(self, plan: StepPlan) -> bool:
        """Pure decode, rotary base 1 and no logn scaling: the captured graphs compute exactly this."""
        max_ctx = max(plan.ctx_lens)
        return (plan.num_decodes == len(plan.q_lens) and all(a == 1.0 for a in plan.alphas)
                and not (self.model_cfg.use_logn_attn and max_ctx > self.model_cfg.seq_length)
                and self.graphs.can_run(len(plan.q_lens), max_ctx))

    def graphable(self, plan: StepPlan) -> bool:
        return self.graphs is not None and self._graphable(plan)

    @torch.inference_mode()
    def run_graph(self, plan: StepPlan, ids_device: torch.Tensor | None = None) -> torch.Tensor:
        bs = self.block_size
        slots = [b[p // bs] * bs + p % bs for b, p in zip(plan.block_tables, plan.positions)]
        return self.graphs.run(plan.token_ids, plan.positions, slots, plan.ctx_lens,
                               self.block_table_tensor(plan.block_tables), ids_device)

    def as_rows(self, plan: StepPlan) -> StepPlan | None:
        """A small step with prefill as one decode row per token: its own position, slot and causal context
        length (position + 1), its sequence's block table. Every row's K/V is stored before any row attends,
        so the decode kernel computes causal attention, and the step replays a CUDA graph instead of the
        host launching a dozen kernels a layer. None: no graphs, too many tokens or context reads."""
        n = len(plan.token_ids)
        if self.graphs is None or n > self.graphs.max_bs or not envs.ROW_PREFILL:
            return None
        rows = decode_rows(plan)
        return rows if sum(rows.ctx_lens) <= ROW_PREFILL_READS and self._graphable(rows) else None

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor | None:
        """Logits [len(plan.logit_rows), vocab] on rank 0, None on other ranks."""
        if self.graphable(plan):
            return self.run_graph(plan)
        row_plan = self.as_rows(plan) if plan.num_decodes < len(plan.q_lens) else None
        if row_plan is not None:
            logits = self.run_graph(row_plan)  # a view of the graph's output: copy the rows out
            if logits is None:
                return None
            r = plan.logit_rows
            return logits[r[0]:r[-1] + 1].clone() if r and r == list(range(r[0], r[-1] + 1)) else logits[r]
        ids, cos, sin, logn, meta, rows = self.prepare(plan)
        hidden = self.model(ids, cos, sin, logn, meta)
        if not plan.logit_rows:  # a prompt chunk that samples nothing (its K/V is the step's work): no lm_head
            return torch.empty(0, self.model_cfg.vocab_size, dtype=self.dtype, device=self.device) \
                if self.rank == 0 else None
        return self.model.compute_logits(hidden.index_select(0, rows))
