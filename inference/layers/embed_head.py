"""Vocabulary-parallel embedding and lm_head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from inference.distributed import all_reduce, gather_last_dim, get_rank, get_world_size
from inference.kernels import decode_matmul, decode_matmul_kernel
from inference.layers.linear import _check, load_rows


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int):
        super().__init__()
        self.tp_rank, self.tp_size = get_rank(), get_world_size()
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // self.tp_size)
        self.start = self.tp_rank * self.per_rank
        self.count = max(0, min(self.per_rank, vocab_size - self.start))
        self.weight = nn.Parameter(torch.zeros(self.per_rank, hidden), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param, src, name="", shard_id=None):
        shape = src.get_shape() if hasattr(src, "get_shape") else src.shape
        _check(name, shape, (self.vocab_size, param.shape[1]))
        load_rows(param, src, self.start, self.count)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Rows by indexing (a vectorized gather on CUDA), not F.embedding: its index_select runs a slow
        # one-thread-per-column loop for 16 ids or fewer.
        if self.tp_size == 1:
            return self.weight[ids]
        local = ids - self.start
        mask = (local >= 0) & (local < self.count)
        out = self.weight[local.clamp(0, self.per_rank - 1)] * mask.unsqueeze(-1)
        return all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Untied lm_head; full logits end up on rank 0 only (None elsewhere)."""

    def forward(self, h: torch.Tensor, argmax: bool = False):
        """Logits [rows, vocab] (None on ranks > 0). argmax: (logits, best), where best holds each lm_head
        tile's largest logit of each row and its column (one rank, 2-64 rows on CUDA:
        `step_io.argmax_finish` takes the rows' argmax from it), or None."""
        best = None
        if h.shape[0] == 0:  # no rows to score: no matmul, no gather (every rank sees the same count)
            logits = h.new_empty(0, self.vocab_size) if self.tp_rank == 0 else None
            return (logits, best) if argmax else logits
        if argmax and self.tp_size == 1 and decode_matmul_kernel(h) == "skinny":
            from inference.kernels.skinny import skinny_gemm

            logits, best = skinny_gemm(h, self.weight, argmax=True)
        else:
            logits = decode_matmul(h, self.weight)
            if logits is None:
                logits = nn.functional.linear(h, self.weight)
        if self.tp_size == 1:
            logits = logits[:, : self.vocab_size]
        else:
            full = gather_last_dim(logits)
            logits = None if full is None else full[:, : self.vocab_size]
        return (logits, best) if argmax else logits
