"""Calibration for static W8A8 with SmoothQuant smoothing.

The float model runs over the calibration texts one block at a time (only that block's weights in
memory, all samples' hidden states kept), recording per-input-channel absolute maxima of every
quantized linear's input. Then, per block:
- smoothing (alpha > 0): for ln_1 -> c_attn and ln_2 -> [w2; w1], s_j = a_j^alpha / w_j^(1 - alpha)
  (a_j: activation absmax of channel j, w_j: absmax of weight column j over the group). The norm weight
  becomes gamma / s (rounded to the checkpoint's dtype) and the weight columns are multiplied by
  s_eff = gamma / rounded(gamma / s), so norm x weight is unchanged up to float32 rounding;
- static input scales: max_j(a_j / s_eff_j) / 127 per quantized linear (attn.c_proj and mlp.c_proj
  inputs are not smoothed: there is no norm before them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from inference.config import ModelConfig
from inference.errors import UserError
from inference.layers.rotary import RotaryEmbedding, apply_rotary
from inference.models.checkpoint import shard_map


@dataclass
class CalibResult:
    input_scale: dict[str, float] = field(default_factory=dict)  # checkpoint module -> static scale
    norm_weight: dict[str, torch.Tensor] = field(default_factory=dict)  # norm tensor name -> smoothed weight
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # checkpoint module -> column factors
    samples: int = 0
    tokens: int = 0


def load_calib(path: str | Path, tokenizer, max_samples: int, max_len: int) -> list[list[int]]:
    """Token ids of the first `max_samples` texts of a .jsonl file ({"text": ...} or {"prompt": ...} per line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--calib {path}: file not found; give a .jsonl file with one {{\"text\": \"...\"}} per line")
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                                'be {"text": "..."}') from e
            text = obj.get("text", obj.get("prompt")) if isinstance(obj, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise UserError(f'{path}:{lineno}: expected {{"text": "<non-empty text>"}}')
            out.append(tokenizer.encode(text)[:max_len])
            if len(out) >= max_samples:
                break
    if not out:
        raise UserError(f"--calib {path} holds no texts")
    return out


class TensorReader:
    """Reads single tensors by name from a sharded checkpoint (one file handle at a time)."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        self.where = {name: fname for fname, names in shard_map(self.dir).items() for name in names}

    def get(self, name: str) -> torch.Tensor:
        fname = self.where.get(name)
        if fname is None:
            raise UserError(f"{self.dir}: the checkpoint lacks tensor {name}; re-download it")
        with safe_open(str(self.dir / fname), "pt") as f:
            return f.get_tensor(name)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def smooth_group(amax: torch.Tensor, weights: list[torch.Tensor], gamma: torch.Tensor, alpha: float):
    """(new norm weight in gamma's dtype, float32 column factors s_eff) for one norm -> linears group."""
    wmax = torch.stack([w.float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = (amax.clamp_min(1e-5).pow(alpha) / wmax.clamp_min(1e-5).pow(1 - alpha)).clamp(1e-4, 1e4)
    g = gamma.float()
    new = (g / s).to(gamma.dtype)
    s_eff = torch.where(new.float() != 0, g / new.float(), s)
    return new, s_eff


@torch.no_grad()
def calibrate(reader: TensorReader, cfg: ModelConfig, samples: list[list[int]], quantized: set[str],
              alpha: float, device: torch.device, progress=None) -> CalibResult:
    """Static scales (and smoothing when alpha > 0) for the checkpoint modules in `quantized`."""
    res = CalibResult(samples=len(samples), tokens=sum(len(s) for s in samples))
    wte = reader.get("transformer.wte.weight")
    hs = [wte[torch.tensor(ids)].float().to(device) for ids in samples]
    del wte
    eps, nh, d = cfg.layer_norm_epsilon, cfg.num_attention_heads, cfg.head_dim
    rope = RotaryEmbedding(cfg.rotary_dim, cfg.rotary_emb_base, device)
    cos, sin = rope.table(1.0, max(len(s) for s in samples))
    for i in range(cfg.num_hidden_layers):
        p = f"transformer.h.{i}."
        get = lambda n: reader.get(p + n).float().to(device)  # noqa: B023 (used within this iteration)
        g1, g2 = reader.get(p + "ln_1.weight"), reader.get(p + "ln_2.weight")
        w_qkv, b_qkv, w_o = get("attn.c_attn.weight"), get("attn.c_attn.bias"), get("attn.c_proj.weight")
        w2, w1, w_c = get("mlp.w2.weight"), get("mlp.w1.weight"), get("mlp.c_proj.weight")
        a1 = torch.zeros(cfg.hidden_size, device=device)
        a2 = torch.zeros(cfg.hidden_size, device=device)
        a_o = torch.zeros(cfg.hidden_size, device=device)
        a_c = torch.zeros(cfg.ffn_size, device=device)
        for j, x in enumerate(hs):
            t = x.shape[0]
            a = _rms(x, g1.float().to(device), eps)
            a1 = torch.maximum(a1, a.abs().amax(0))
            q, k, v = (a @ w_qkv.t() + b_qkv).view(t, 3, nh, d).unbind(1)
            q, k = apply_rotary(q, cos[:t], sin[:t]), apply_rotary(k, cos[:t], sin[:t])
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                scale=1 / math.sqrt(d)).transpose(0, 1).reshape(t, -1)
            a_o = torch.maximum(a_o, o.abs().amax(0))
            x = x + o @ w_o.t()
            m = _rms(x, g2.float().to(device), eps)
            a2 = torch.maximum(a2, m.abs().amax(0))
            act = (m @ w1.t()) * torch.nn.functional.silu(m @ w2.t())
            a_c = torch.maximum(a_c, act.abs().amax(0))
            hs[j] = x + act @ w_c.t()
        groups = [("ln_1", a1, ["attn.c_attn"], [w_qkv], g1), ("ln_2", a2, ["mlp.w2", "mlp.w1"], [w2, w1], g2)]
        for ln, amax, mods, ws, gamma in groups:
            if not all(p + m in quantized for m in mods):
                continue
            if alpha > 0:
                new, s_eff = smooth_group(amax.cpu(), [w.cpu() for w in ws], gamma, alpha)
                res.norm_weight[p + ln + ".weight"] = new
                for m in mods:
                    res.factors[p + m] = s_eff
                amax = amax.cpu() / s_eff
            for m in mods:
                res.input_scale[p + m] = float(amax.max()) / 127.0
        for m, amax in (("attn.c_proj", a_o), ("mlp.c_proj", a_c)):
            if p + m in quantized:
                res.input_scale[p + m] = float(amax.max()) / 127.0
        if progress:
            progress(i + 1)
    for name, s in res.input_scale.items():
        if not (s > 0 and math.isfinite(s)):
            raise UserError(f"calibration gave {name} an input scale of {s}; the checkpoint's weights may be "
                            "broken (NaN/inf) or the calibration texts too short")
    return res
