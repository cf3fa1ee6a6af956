"""Rotary embedding (rotate-half), with dynamic-NTK bases and logn query scaling.

Tables are built per NTK alpha (alpha is chosen per sequence at prefill and kept) and grown on demand.
"""

from __future__ import annotations

import math

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def ntk_base(base: float, alpha: float, dim: int) -> float:
    return base * alpha ** (dim / (dim - 2)) if alpha != 1.0 else base


class RotaryEmbedding:
    def __init__(self, dim: int, base: float, device, max_len: int = 4096):
        self.dim, self.base, self.device = dim, base, device
        self.tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self.max_len = max_len

    def table(self, alpha: float, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos_sin = self.tables.get(alpha)
        if cos_sin is None or cos_sin[0].shape[0] < needed:
            n = max(needed, self.max_len)
            b = ntk_base(self.base, alpha, self.dim)
            inv_freq = 1.0 / (b ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim))
            freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq).float()
            emb = torch.cat((freqs, freqs), dim=-1)
            cos_sin = (emb.cos().to(self.device), emb.sin().to(self.device))
            self.tables[alpha] = cos_sin
            self.max_len = max(self.max_len, n)
        return cos_sin

    def for_tokens(self, positions: torch.Tensor, alphas: list[float] | None = None,
                   seg_lens: list[int] | None = None, max_pos: int | None = None):
        """cos/sin [T, dim] in float32 for each token; `alphas[i]` applies to segment i of length seg_lens[i]."""
        needed = (max_pos if max_pos is not None else int(positions.max()) if positions.numel() else 0) + 1
        if not alphas or all(a == 1.0 for a in alphas):
            cos, sin = self.table(1.0, needed)
            return cos[positions], sin[positions]
        cos_parts, sin_parts, start = [], [], 0
        for a, n in zip(alphas, seg_lens):
            cos, sin = self.table(a, needed)
            p = positions[start:start + n]
            cos_parts.append(cos[p])
            sin_parts.append(sin[p])
            start += n
        return torch.cat(cos_parts), torch.cat(sin_parts)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; rotate the first cos.shape[-1] dims in float32 (as Qwen does), keep the rest."""
    d = cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :d], xf[..., d:]
    rot = rot * cos[:, None, :] + rotate_half(rot) * sin[:, None, :]
    return torch.cat((rot, rest), dim=-1).to(x.dtype) if rest.numel() else rot.to(x.dtype)


def logn_scale(positions: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Per-token query scale: ln(p + 1) / ln(seq_length) once p + 1 > seq_length, else 1."""
    p1 = (positions + 1).to(torch.float64)
    scale = torch.where(p1 > seq_length, torch.log(p1) / math.log(seq_length), torch.ones_like(p1))
    return scale.float()
