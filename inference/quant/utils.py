"""Schemes, skip lists and the quantization arithmetic every path shares.

Weights: int8, symmetric, one float32 scale per output channel (row): w ~= q * scale, q in [-127, 127].
Activations (W8A8): int8 per token (dynamic, scale = absmax / 127 of each row) or per tensor with a
calibrated static scale (and, for msmodelslim checkpoints, an offset: x ~= (q - offset) * scale).
Rounding is to nearest, ties to even (torch.round; the Triton kernels use rint).
"""

from __future__ import annotations

import fnmatch
import re

import torch

from inference.errors import UserError

SCHEMES = ("w8a16", "w8a8")
# the reference's Qwen-14B W8A8 keeps every mlp.c_proj in float (its inputs carry the largest outliers)
DEFAULT_SKIP = {"w8a16": (), "w8a8": ("mlp.c_proj",)}
# checkpoint modules that can be quantized (embeddings and lm_head always stay float)
TARGET_RE = re.compile(r"^transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.w1|mlp\.w2|mlp\.c_proj)$")
CHUNK_ELEMENTS = 1 << 24  # weight elements quantized at once: each float32 temporary stays at 64 MiB


def chunk_rows(cols: int) -> int:
    """Rows of a [rows, cols] weight quantized at once (whole rows, about CHUNK_ELEMENTS elements)."""
    return max(1, CHUNK_ELEMENTS // max(cols, 1))


def check_scheme(scheme: str | None) -> str:
    s = (scheme or "").lower()
    if s not in SCHEMES:
        raise UserError(f"unknown quantization scheme {scheme!r}: use w8a16 (int8 weights) or w8a8 "
                        "(int8 weights and activations)")
    return s


def parse_skip(text: str | None, scheme: str) -> tuple[str, ...]:
    """`--skip`: comma-separated module patterns; None = the scheme's default, "none" = quantize every target."""
    if text is None:
        return DEFAULT_SKIP[scheme]
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    if items == ("none",) or not items:
        return ()
    for p in items:
        if not re.fullmatch(r"[A-Za-z0-9_.*?\[\]]+", p):
            raise UserError(f"--skip: {p!r} is not a module pattern (e.g. mlp.c_proj, transformer.h.0.attn.c_attn, "
                            "transformer.h.*.mlp.w1)")
    return items


def is_skipped(module: str, patterns) -> bool:
    """`module` is a checkpoint module name (transformer.h.3.mlp.c_proj); a pattern matches it whole, as a
    dotted suffix (mlp.c_proj) or as a glob (transformer.h.1*.attn.*)."""
    return any(module == p or module.endswith("." + p) or fnmatch.fnmatchcase(module, p) for p in patterns)


def is_target(module: str) -> bool:
    return TARGET_RE.match(module) is not None


def row_scales(absmax: torch.Tensor) -> torch.Tensor:
    """float32 scales from absolute maxima; an all-zero row gets scale 1 (its values quantize to 0)."""
    absmax = absmax.float()
    # a tensor divisor: CUDA divides by a Python scalar through its reciprocal, which can differ by 1 ulp
    return torch.where(absmax > 0, absmax / torch.full_like(absmax, 127.0), torch.ones_like(absmax))


def weight_absmax(w: torch.Tensor) -> torch.Tensor:
    """Per-row max |w| in float32, computed in row chunks."""
    n = chunk_rows(w.shape[1])
    return torch.cat([w[i:i + n].float().abs().amax(dim=1) for i in range(0, w.shape[0], n)])


def quantize_weight(w: torch.Tensor, absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and float32 per-row scales of a [n, k] float weight (same device)."""
    scale = row_scales(weight_absmax(w) if absmax is None else absmax)
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    n = chunk_rows(w.shape[1])
    for i in range(0, w.shape[0], n):
        rows = w[i:i + n].float() / scale[i:i + n, None]
        q[i:i + n] = torch.round(rows).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [m, k] and float32 [m] scales of float activations; `scale` given = use those per-row scales."""
    xf = x.float()
    if scale is None:
        scale = row_scales(xf.abs().amax(dim=-1))
    q = torch.round(xf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_static(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """int8 activations with one calibrated scale (and, asymmetric, an offset) for the whole tensor."""
    v = x.float() / scale.float()
    if offset is None:
        return torch.round(v).clamp_(-127, 127).to(torch.int8)
    return torch.round(v + offset.float()).clamp_(-128, 127).to(torch.int8)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [m, k] int8 @ b[n, k]^T int8 -> int32 [m, n] (exact), on any device."""
    if a.device.type == "cpu":
        try:
            return torch._int_mm(a, b.t())
        except (RuntimeError, AttributeError):
            pass
    # float32 holds every product exactly; sums past 2^24 round (relative 6e-8), far below int8 noise
    return torch.round(a.float() @ b.float().t()).to(torch.int32)
