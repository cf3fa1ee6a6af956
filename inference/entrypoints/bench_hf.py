"""The baseline: transformers' generate with a static cache (compiled) on the same weights (tp 1)."""

from __future__ import annotations

import gc
import sys
import time

import torch

from inference.entrypoints.bench_shapes import decode_bytes


def hf_model_from_engine(engine):
    """A Qwen2ForCausalLM whose parameters are views of the engine's weights (no copy)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m, model = engine.model_config, engine.runner.model
    conf = Qwen2Config(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_size,
                       num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                       num_key_value_heads=m.num_attention_heads, max_position_embeddings=m.seq_length,
                       rope_theta=float(m.rotary_emb_base), rms_norm_eps=m.layer_norm_epsilon,
                       tie_word_embeddings=False, use_sliding_window=False)
    h, f = m.hidden_size, m.ffn_size
    sd = {"model.embed_tokens.weight": model.transformer.wte.weight, "model.norm.weight": model.transformer.ln_f.weight,
          "lm_head.weight": model.lm_head.weight}
    for i, blk in enumerate(model.transformer.h):
        q = f"model.layers.{i}."
        for j, nm in enumerate("qkv"):
            sd[q + f"self_attn.{nm}_proj.weight"] = blk.attn.c_attn.weight[j * h:(j + 1) * h]
            sd[q + f"self_attn.{nm}_proj.bias"] = blk.attn.c_attn.bias[j * h:(j + 1) * h]
        sd[q + "self_attn.o_proj.weight"] = blk.attn.c_proj.weight
        sd[q + "input_layernorm.weight"] = blk.ln_1.weight
        sd[q + "post_attention_layernorm.weight"] = blk.ln_2.weight
        sd[q + "mlp.gate_proj.weight"] = blk.mlp.w2_w1.weight[:f]
        sd[q + "mlp.up_proj.weight"] = blk.mlp.w2_w1.weight[f:]
        sd[q + "mlp.down_proj.weight"] = blk.mlp.c_proj.weight
    with torch.device("meta"):
        hf = Qwen2ForCausalLM(conf)
    hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=False, assign=True)
    with torch.device(engine.device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(conf)
    return hf.to(engine.dtype).eval()


def hf_rows(engine, a, bw, el, label) -> list[dict]:
    from inference.entrypoints.bench import progress_line, row

    dev, m = engine.device, engine.model_config
    engine.runner.graphs = None
    engine.runner.k_cache = engine.runner.v_cache = None
    for attn in engine.runner.attn_layers:
        attn.k_cache = attn.v_cache = torch.empty(0)
    gc.collect()
    torch.cuda.empty_cache()
    hf = hf_model_from_engine(engine)
    hf.generation_config.cache_implementation = "static"  # generate compiles the decode step itself
    rows = []

    def gen(ids, n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                    pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    plan = a.plan
    cases = [c for c in plan.cases if c[0] in plan.baseline_batch_sizes] + [(1, n, 1) for n in plan.ttft_lens]
    for batch, n_in, n_out in cases:
        try:
            ids = torch.randint(0, 150000, (batch, n_in), device=dev)
            gen(ids, n_out)  # compile / warm up this shape
            gen(ids, n_out)
            first = gen(ids, 1)
            e2e = gen(ids, n_out) if n_out > 1 else first
            floor = batch * bw / decode_bytes(m, batch, n_in + n_out / 2, el)
            rows.append(row("hf-static " + label, batch, n_in, n_out, {"e2e": e2e, "first": first}, floor))
            print("baseline " + progress_line(len(rows), len(cases), rows[-1]), file=sys.stderr, flush=True)
        except Exception as e:  # report, keep the rest of the table
            print(f"baseline failed for batch {batch} {n_in}/{n_out}: {e!r}"[:500], file=sys.stderr)
    return rows
