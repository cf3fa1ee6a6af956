"""Which kernels compute each step of a Qwen block, chosen in one place.

Each choice depends only on the tensors (device, dtype, rows) and the layers (quantized, biased, tensor
parallel), so steps of one shape always run the same kernels (CUDA graphs capture them as they are). On
CUDA with Triton, for plain (unquantized) layers; "decode rows" are 2-64 rows of float16/bfloat16:
- `qkv_rope`, c_attn + rotary (+ logn) + K/V store: where every row is a decode row, one kernel
  (`qkv_rope_store`, Hopper); otherwise c_attn, then one kernel for the rest (`rope_and_store`).
- `gated_act`, w2_w1 + SiLU gate: at 1 row the GEMV, at decode rows the skinny GEMM, with the gate in the
  matmul's epilogue; otherwise cuBLAS, then `silu_mul`.
- `project_add_norm`, c_proj + residual add + the next RMSNorm: at decode rows on one rank, the skinny GEMM
  with the add and the norm in its split-K reduce kernel (or after it, unsplit); above 64 rows, the add in
  cuBLAS's epilogue (`addmm_`, rank 0) and then the norm; otherwise c_proj, then the add + norm kernel.
- Elsewhere: other matmuls `kernels.decode_matmul` (`LinearBase.matmul`), decode attention
  `attention.decode_attention`, norms `RMSNorm.forward`.
Quantized layers run their `quant_method`'s matmul and the unfused forms. On the CPU and NPU: torch.
The fused forms give the unfused forms' results (tests/test_gpu_fusion.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from inference.distributed import all_reduce
from inference.kernels import DECODE_MATMUL_MAX_ROWS, decode_matmul, decode_matmul_kernel, use_triton
from inference.layers.layernorm import RMSNorm
from inference.layers.rotary import apply_rotary

if TYPE_CHECKING:
    from inference.layers.attention import AttentionMetadata, PagedAttention
    from inference.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear


def qkv_rope(c_attn: QKVParallelLinear, attn: PagedAttention, x: torch.Tensor, cos, sin, logn,
             meta: AttentionMetadata, full_rotary: bool):
    """(q, k, v, stored): c_attn(x) as [T, H, D] heads, q and k rotated, q scaled by logn. stored: the K/V
    are in `attn`'s cache already (k, v None where the cache is all attention reads). Fused only where the
    rotary covers the whole head."""
    fast = full_rotary and use_triton(x)
    heads = (x.shape[0], 3, attn.num_heads, attn.head_dim)
    if fast and meta.num_decodes == x.shape[0] and c_attn.quant_method is None:
        from inference.kernels.qkv_rope import qkv_rope_store

        q = qkv_rope_store(x, c_attn.weight, c_attn.bias, cos, sin, logn, attn.k_cache, attn.v_cache,
                           meta.slot_mapping, attn.num_heads, attn.head_dim)
        if q is not None:  # decode rows read K/V from the cache only
            return q, None, None, True
    qkv = c_attn(x)
    v = qkv.view(heads)[:, 2]
    if fast:
        from inference.kernels.fused import rope_and_store

        q, k = rope_and_store(qkv, cos, sin, logn, attn.k_cache, attn.v_cache, meta.slot_mapping, attn.num_heads,
                              attn.head_dim)
        return q, k, v, True
    q, k = qkv.view(heads)[:, :2].unbind(1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if logn is not None:
        q = (q.float() * logn[:, None, None]).to(q.dtype)
    return q, k, v.contiguous(), False


def gated_act(w2_w1: MergedColumnParallelLinear, x: torch.Tensor) -> torch.Tensor:
    """silu(x W_gate^T) * (x W_up^T) from the stacked [gate; up] weight."""
    if w2_w1.quant_method is None:
        act = decode_matmul(x, w2_w1.weight, gated=True)  # silu(gate) * up in the matmul's epilogue
    else:  # int8 weights: the same fusion where the scheme has it (W8A16 at 1-64 tokens, W8A8 at one)
        apply_gated = getattr(w2_w1.quant_method, "apply_gated", None)
        act = apply_gated(w2_w1, x) if apply_gated is not None else None
    if act is not None:
        return act
    gate_up = w2_w1(x)
    if use_triton(gate_up):
        from inference.kernels.fused import silu_mul

        return silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return up * nn.functional.silu(gate)


def project_add_norm(proj: RowParallelLinear, a: torch.Tensor, residual: torch.Tensor, norm: RMSNorm):
    """(norm(s), s) with s = residual + proj(a): a block's output projection, its residual add and the norm
    after it. `residual` may be overwritten with s."""
    plain = proj.quant_method is None and proj.bias is None
    if plain and proj.tp_size == 1 and type(norm) is RMSNorm and decode_matmul_kernel(a) == "skinny":
        from inference.kernels.skinny import skinny_gemm

        return skinny_gemm(a, proj.weight, norm=(residual, norm.weight, norm.eps))  # one kernel fewer a norm
    if plain and a.shape[0] > DECODE_MATMUL_MAX_ROWS and use_triton(a):
        # rank 0 adds the residual in the matmul's epilogue (the all-reduce adds it once): the norm no
        # longer reads it, one pass over the hidden state fewer
        y = residual.addmm_(a, proj.weight.t()) if proj.tp_rank == 0 else a @ proj.weight.t()
        return norm(all_reduce(y))
    return norm(proj(a), residual)
