"""Qwen v1 (QWenLMHeadModel): module names mirror the checkpoint keys so weights load by name."""

from __future__ import annotations

import torch
from torch import nn

from inference.config import ModelConfig
from inference.distributed import get_world_size
from inference.kernels import thin_matmul, use_triton
from inference.layers.attention import AttentionMetadata, PagedAttention
from inference.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from inference.layers.layernorm import RMSNorm
from inference.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from inference.layers.rotary import apply_rotary


class QWenAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        tp = get_world_size()
        self.num_heads = cfg.num_attention_heads // tp
        self.head_dim = cfg.head_dim
        self.c_attn = QKVParallelLinear(cfg.hidden_size, bias=True)
        self.c_proj = RowParallelLinear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.attn = PagedAttention(self.num_heads, self.head_dim)
        self.full_rotary = cfg.rotary_dim == cfg.head_dim

    def forward(self, x, residual, cos, sin, logn, meta: AttentionMetadata, norm: RMSNorm):
        """(norm(output + residual), output + residual): see RowParallelLinear.forward."""
        o = self._attend(x, cos, sin, logn, meta)
        return self.c_proj(o.reshape(x.shape[0], -1), residual, norm)

    def _attend(self, x, cos, sin, logn, meta: AttentionMetadata) -> torch.Tensor:
        """Attention output [T, H, D]. On CUDA with every row a decode row (2-64 rows, Hopper): c_attn, rotary
        and the K/V store in one kernel (qkv_rope); elsewhere on CUDA: c_attn, then one kernel for rotary, logn
        and the store; on the CPU and NPU: torch."""
        fast = self.full_rotary and use_triton(x)
        if fast and meta.num_decodes == x.shape[0] and self.c_attn.quant_method is None:
            from inference.kernels.qkv_rope import qkv_rope_store

            q = qkv_rope_store(x, self.c_attn.weight, self.c_attn.bias, cos, sin, logn, self.attn.k_cache,
                               self.attn.v_cache, meta.slot_mapping, self.num_heads, self.head_dim)
            if q is not None:  # decode rows read K/V from the cache only
                return self.attn(q, None, None, meta, stored=True)
        qkv = self.c_attn(x)
        v = qkv.view(x.shape[0], 3, self.num_heads, self.head_dim)[:, 2]
        if fast:
            from inference.kernels.fused import rope_and_store

            q, k = rope_and_store(qkv, cos, sin, logn, self.attn.k_cache, self.attn.v_cache, meta.slot_mapping,
                                  self.num_heads, self.head_dim)
            return self.attn(q, k, v, meta, stored=True)
        q, k = qkv.view(x.shape[0], 3, self.num_heads, self.head_dim)[:, :2].unbind(1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if logn is not None:
            q = (q.float() * logn[:, None, None]).to(q.dtype)
        return self.attn(q, k, v.contiguous(), meta)


class QWenMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # w2 is the gate (SiLU), w1 the up projection: fused as [w2; w1] per rank.
        self.w2_w1 = MergedColumnParallelLinear(cfg.hidden_size, [cfg.ffn_size, cfg.ffn_size])
        self.c_proj = RowParallelLinear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x, residual, norm: RMSNorm):
        """(norm(output + residual), output + residual): see RowParallelLinear.forward."""
        if self.w2_w1.quant_method is None:
            act = thin_matmul(x, self.w2_w1.weight, gated=True)  # silu(gate) * up in one pass
            if act is not None:
                return self.c_proj(act, residual, norm)
        gate_up = self.w2_w1(x)
        if use_triton(gate_up):
            from inference.kernels.fused import silu_mul

            return self.c_proj(silu_mul(gate_up), residual, norm)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.c_proj(up * nn.functional.silu(gate), residual, norm)


class QWenBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.attn = QWenAttention(cfg)
        self.ln_2 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mlp = QWenMLP(cfg)

    def forward(self, h, residual, cos, sin, logn, meta, next_norm: RMSNorm):
        """h: this block's input already through ln_1, residual: the stream it came from. Returns the same
        for the next block: (next_norm(stream), stream). Each row-parallel matmul runs the norm after it
        (fused into its reduce kernel at decode sizes)."""
        h, residual = self.attn(h, residual, cos, sin, logn, meta, self.ln_2)
        return self.mlp(h, residual, next_norm)


class QWenModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.h = nn.ModuleList(QWenBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)

    def forward(self, ids, cos, sin, logn, meta):
        h, residual = self.h[0].ln_1(self.wte(ids))
        norms = [b.ln_1 for b in self.h[1:]] + [self.ln_f]
        for block, next_norm in zip(self.h, norms):
            h, residual = block(h, residual, cos, sin, logn, meta, next_norm)
        return h


class QWenLMHeadModel(nn.Module):
    # checkpoint key -> (parameter name, shard id) for fused parameters
    packed = {"mlp.w2.": ("mlp.w2_w1.", 0), "mlp.w1.": ("mlp.w2_w1.", 1)}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = QWenModel(cfg)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)

    def forward(self, ids, cos, sin, logn, meta) -> torch.Tensor:
        return self.transformer(ids, cos, sin, logn, meta)

    def compute_logits(self, hidden: torch.Tensor, argmax: bool = False):
        """Logits (None on ranks > 0); argmax: (logits, per-tile argmax partials or None) (ParallelLMHead)."""
        return self.lm_head(hidden, argmax)

    def param_for(self, key: str) -> tuple[str, int | None]:
        for src, (dst, shard) in self.packed.items():
            if src in key:
                return key.replace(src, dst), shard
        return key, None

    def attention_layers(self) -> list[PagedAttention]:
        return [b.attn.attn for b in self.transformer.h]
