"""Independent references for the engine's output.

- `hf_qwen2(model_dir)`: transformers' Qwen2ForCausalLM holding the same weights mapped over
  (exact within seq_length).
- `reference_logits(weights, cfg, ids)`: a plain full-sequence forward written from the published
  formulas, including dynamic NTK and logn attention past seq_length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of `a` against the reference `b` (Frobenius norms, in float32)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def load_all(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return {k: v.float() for k, v in out.items()}


def hf_qwen2(model_dir: Path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    w = load_all(model_dir)
    h, ffn = cfg["hidden_size"], cfg["intermediate_size"] // 2
    conf = Qwen2Config(
        vocab_size=cfg["vocab_size"], hidden_size=h, intermediate_size=ffn,
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"], max_position_embeddings=cfg["seq_length"],
        rope_theta=float(cfg["rotary_emb_base"]), rms_norm_eps=cfg["layer_norm_epsilon"],
        tie_word_embeddings=False, use_sliding_window=False, attn_implementation="eager")
    model = Qwen2ForCausalLM(conf).float().eval()
    sd = {"model.embed_tokens.weight": w["transformer.wte.weight"], "model.norm.weight": w["transformer.ln_f.weight"],
          "lm_head.weight": w["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        qkv_w, qkv_b = w[p + "attn.c_attn.weight"].split(h), w[p + "attn.c_attn.bias"].split(h)
        for j, name in enumerate("qkv"):
            sd[q + f"self_attn.{name}_proj.weight"] = qkv_w[j]
            sd[q + f"self_attn.{name}_proj.bias"] = qkv_b[j]
        sd[q + "self_attn.o_proj.weight"] = w[p + "attn.c_proj.weight"]
        sd[q + "input_layernorm.weight"] = w[p + "ln_1.weight"]
        sd[q + "post_attention_layernorm.weight"] = w[p + "ln_2.weight"]
        sd[q + "mlp.gate_proj.weight"] = w[p + "mlp.w2.weight"]
        sd[q + "mlp.up_proj.weight"] = w[p + "mlp.w1.weight"]
        sd[q + "mlp.down_proj.weight"] = w[p + "mlp.c_proj.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if [m for m in missing if "rotary" not in m] or unexpected:
        raise RuntimeError(f"oracle mapping broken: {missing} {unexpected}")
    return model


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the prompt's last-position logits, with an explicit all-ones mask (pad id trap)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=None, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), out.logits[0][0]


@torch.inference_mode()
def hf_forced(model, prompt: list[int], tokens: list[int]) -> list[int]:
    """The oracle's greedy pick at each step of `tokens`, fed the prompt and the tokens before that step (one
    forward pass, all-ones mask): where lower precision broke a near-tie, later steps still compare."""
    ids = torch.tensor([prompt + tokens[:-1]])
    return model(ids, attention_mask=torch.ones_like(ids)).logits[0, len(prompt) - 1:].argmax(-1).tolist()


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat((-b, a), -1)


@torch.inference_mode()
def reference_logits(w: dict, cfg: dict, ids: list[int], alpha: float) -> torch.Tensor:
    """All-position logits [L, V] in float64 from the formulas (rotary base from `alpha`, logn scaling)."""
    w = {k: v.double() for k, v in w.items()}
    h, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    d = cfg["kv_channels"]
    seq_len, n = cfg["seq_length"], len(ids)
    base = cfg["rotary_emb_base"] * alpha ** (d / (d - 2))
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    logn = torch.tensor([math.log(p + 1) / math.log(seq_len) if p + 1 > seq_len else 1.0 for p in range(n)],
                        dtype=torch.float64)
    if not cfg.get("use_logn_attn", True):
        logn = torch.ones(n, dtype=torch.float64)
    x = w["transformer.wte.weight"][torch.tensor(ids)]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        a = _rms(x, w[p + "ln_1.weight"], eps)
        qkv = a @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(n, nh, d).transpose(0, 1) for t in qkv.split(h, -1))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        q = q * logn[None, :, None]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(n, h) @ w[p + "attn.c_proj.weight"].T
        m = _rms(x, w[p + "ln_2.weight"], eps)
        act = (m @ w[p + "mlp.w1.weight"].T) * torch.nn.functional.silu(m @ w[p + "mlp.w2.weight"].T)
        x = x + act @ w[p + "mlp.c_proj.weight"].T
    return _rms(x, w["transformer.ln_f.weight"], eps) @ w["lm_head.weight"].T
