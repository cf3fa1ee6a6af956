"""Qwen v1 (QWenLMHeadModel): module names mirror the checkpoint keys so weights load by name."""

from __future__ import annotations

import torch
from torch import nn

from inference.config import ModelConfig
from inference.distributed import get_world_size
from inference.layers.attention import AttentionMetadata, PagedAttention
from inference.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from inference.layers.fusion import gated_act, qkv_rope
from inference.layers.layernorm import RMSNorm
from inference.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from inference.layers.residual import Deferred, ResidualStream


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

    def forward(self, x, cos, sin, logn, meta: AttentionMetadata) -> Deferred:
        """c_proj(attention(x)): q, k, v from c_attn with rotary (and logn) on q and k, K/V into the cache,
        paged attention over each sequence's blocks."""
        q, k, v, stored = qkv_rope(self.c_attn, self.attn, x, cos, sin, logn, meta, self.full_rotary)
        o = self.attn(q, k, v, meta, stored=stored)
        return Deferred(self.c_proj, o.reshape(x.shape[0], -1))


class QWenMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # w2 is the gate (SiLU), w1 the up projection: fused as [w2; w1] per rank.
        self.w2_w1 = MergedColumnParallelLinear(cfg.hidden_size, [cfg.ffn_size, cfg.ffn_size])
        self.c_proj = RowParallelLinear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x) -> Deferred:
        """c_proj(silu(x w2^T) * (x w1^T))."""
        return Deferred(self.c_proj, gated_act(self.w2_w1, x))


class QWenBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.attn = QWenAttention(cfg)
        self.ln_2 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mlp = QWenMLP(cfg)

    def forward(self, x: ResidualStream, cos, sin, logn, meta) -> ResidualStream:
        """Pre-norm: x + attn(ln_1(x)), then + mlp(ln_2(x)). Each output projection, its residual add and the
        next norm run together when that norm is taken (`ResidualStream`)."""
        x = x.add(self.attn(x.norm(self.ln_1), cos, sin, logn, meta))
        return x.add(self.mlp(x.norm(self.ln_2)))


class QWenModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.h = nn.ModuleList(QWenBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)

    def forward(self, ids, cos, sin, logn, meta) -> torch.Tensor:
        x = ResidualStream(self.wte(ids))
        for block in self.h:
            x = block(x, cos, sin, logn, meta)
        return x.norm(self.ln_f)


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
