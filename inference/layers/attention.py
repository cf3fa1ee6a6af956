"""Paged attention: new K/V go into block slots; queries attend over each sequence's blocks.

Layout of a step's tokens: decode sequences first (one token each), then prefill chunks.
CPU/NPU use the torch paths below; CUDA decode uses the Triton kernel in inference/kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from inference.kernels import use_triton

# cuDNN's kernel is the fastest on Hopper, but it builds an execution plan for every new shape (tens of
# ms on an H100), which every chat turn would pay at a new prompt length. So long prompts go through it
# padded to a bucket (causal_cudnn); everything else uses flash / memory-efficient kernels (no plans).
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
CUDNN_MIN_LEN = 1024
CUDNN_BUCKET = 256
_direct_flash = [True]  # cleared if this GPU has no flash kernel (then causal_lower_right picks one)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] flat cache slot of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int32 (padded with 0)
    context_lens: torch.Tensor  # [B] int32: tokens in context after this step
    q_lens: list[int]
    ctx_lens: list[int]
    num_decodes: int  # the first num_decodes sequences have one query token each
    max_ctx: int
    no_cached_prefix: list[bool]  # per sequence: no cached context before this chunk
    grouped_rows: bool = False  # decode rows in aligned groups of one sequence (a prefill chunk in a graph)

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)


def store_kv(k_cache, v_cache, k, v, slot_mapping):
    """Caches are [blocks, slots, heads, dim] views (not necessarily contiguous)."""
    bs = k_cache.shape[1]
    blk, off = slot_mapping // bs, slot_mapping % bs
    k_cache[blk, off] = k
    v_cache[blk, off] = v


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int) -> torch.Tensor:
    """[ctx_len, H, D] of one sequence from its blocks: one copy (index_select's result is contiguous, so the
    block and slot dims merge as a view; indexing the head-major cache with [] kept its layout and the merge
    copied everything a second time)."""
    bs = cache.shape[1]
    nb = -(-ctx_len // bs)
    return cache.index_select(0, block_table[:nb]).reshape(-1, *cache.shape[2:])[:ctx_len]


def decode_attention_torch(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale):
    """q [B, H, D]; padded gather over block tables; fp32 softmax."""
    bs = k_cache.shape[1]
    nb = -(-max_ctx // bs)
    bt = block_tables[:, :nb].long()
    k = k_cache[bt].reshape(bt.shape[0], -1, *k_cache.shape[2:])  # [B, L, H, D]
    v = v_cache[bt].reshape(bt.shape[0], -1, *v_cache.shape[2:])
    scores = torch.einsum("bhd,blhd->bhl", q.float(), k.float()) * scale
    valid = torch.arange(k.shape[1], device=q.device)[None, :] < context_lens[:, None]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhl,blhd->bhd", probs, v.float()).to(q.dtype)


def decode_attention(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale, grouped_rows=False):
    """Query rows over their blocks: the Triton paged decode kernel on CUDA (`grouped_rows`: the kernel that
    takes aligned groups of one sequence's rows together, `row_group_attention`), torch elsewhere."""
    if use_triton(q):
        if grouped_rows:
            from inference.kernels.row_group_attention import row_group_attention

            return row_group_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
        from inference.kernels.paged_attention import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale)
    return decode_attention_torch(q, k_cache, v_cache, block_tables, context_lens, max_ctx, scale)


def causal_cudnn(q, k, v, scale):
    """Causal attention of [n, H, D] through cuDNN with the length padded up to a multiple of CUDNN_BUCKET:
    padded rows come last, and causally no real query sees them, so the first n outputs are exact. The
    padding bounds the number of execution plans cuDNN builds (one per bucket, once per process)."""
    n = q.shape[0]
    pad = -n % CUDNN_BUCKET
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    else:  # the padded layout (contiguous): a plan built for the bucket (engine warm-up) serves this too
        q, k, v = (t.contiguous() for t in (q, k, v))
    qt, kt, vt = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, *SDPA_BACKENDS]):
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    return out[0, :, :n].transpose(0, 1)


def prefill_attention(q, k, v, k_cache, v_cache, block_table, ctx_len, no_cached_prefix, scale):
    """One sequence's chunk: q/k/v [n, H, D] of the new tokens; context = cached prefix + chunk."""
    n = q.shape[0]
    if no_cached_prefix and q.is_cuda and n >= CUDNN_MIN_LEN and q.dtype != torch.float32:
        return causal_cudnn(q, k, v, scale)
    if no_cached_prefix:
        kk, vv = k, v
    else:
        kk, vv = gather_context(k_cache, block_table, ctx_len), gather_context(v_cache, block_table, ctx_len)
    qt, kt, vt = q.transpose(0, 1)[None], kk.transpose(0, 1)[None], vv.transpose(0, 1)[None]
    if kk.shape[0] != n and q.is_cuda and q.dtype != torch.float32 and _direct_flash[0]:
        # The chunk's queries are the last n of ctx_len positions. Flash's causal flag means lower-right
        # alignment when q is shorter than k (what causal_lower_right dispatches to, minus its checks).
        try:
            out = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, True, False, scale=scale)[0]
            return out[0].transpose(0, 1)
        except RuntimeError:  # no flash kernel for this GPU or shape: the checked path below from now on
            _direct_flash[0] = False
    with sdpa_kernel(SDPA_BACKENDS):
        if kk.shape[0] == n:
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
        else:  # causal from the lower right
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=causal_lower_right(n, ctx_len), scale=scale)
    return out[0].transpose(0, 1)


class PagedAttention(torch.nn.Module):
    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = head_dim**-0.5
        self.k_cache = self.v_cache = torch.empty(0)

    def forward(self, q, k, v, meta: AttentionMetadata, stored: bool = False) -> torch.Tensor:
        """q, k, v: [T, H, D]. Returns [T, H, D]. `stored`: K/V are already in the cache."""
        if self.k_cache.numel() and not stored:
            store_kv(self.k_cache, self.v_cache, k, v, meta.slot_mapping)
        nd = meta.num_decodes
        outs = []
        if nd:
            args = (q[:nd], self.k_cache, self.v_cache, meta.block_tables[:nd], meta.context_lens[:nd],
                    meta.max_ctx, self.scale, meta.grouped_rows)
            outs.append(decode_attention(*args))
        start = nd
        for i in range(nd, meta.num_seqs):
            n = meta.q_lens[i]
            sl = slice(start, start + n)
            outs.append(prefill_attention(q[sl], k[sl], v[sl], self.k_cache, self.v_cache, meta.block_tables[i],
                                          meta.ctx_lens[i], meta.no_cached_prefix[i], self.scale))
            start += n
        return outs[0] if len(outs) == 1 else torch.cat(outs)
