"""Published Qwen v1 shapes for random-weight benchmarks, and the byte counts of the bandwidth floor."""

from __future__ import annotations

SHAPES = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, kv_channels=128,
               intermediate_size=22016, vocab_size=151936, seq_length=8192, rotary_emb_base=10000),
    "14b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, kv_channels=128,
                intermediate_size=27392, vocab_size=152064, seq_length=2048, rotary_emb_base=10000),
    "72b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, kv_channels=128,
                intermediate_size=49152, vocab_size=152064, seq_length=32768, rotary_emb_base=1000000),
}


def decode_bytes(cfg, batch: int, avg_ctx: float, element_size: int, weight_element_size: float | None = None,
                 tp: int = 1, weights: int | None = None) -> float:
    """Bytes one decode step must read per rank: every linear weight once (lm_head too) plus each
    sequence's K/V. `weights`: the rank's weight bytes as loaded (`weight_read_bytes`), in place of the
    formula (int8 layers, layers a skip list keeps in float, a float lm_head)."""
    h, f, v, n = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size, cfg.num_hidden_layers
    linear = n * (4 * h * h + 3 * h * f) + v * h
    kv_per_token = 2 * n * h * element_size
    wes = weight_element_size if weight_element_size is not None else element_size
    if weights is not None:
        return weights + batch * avg_ctx * kv_per_token / tp
    return (linear * wes + batch * avg_ctx * kv_per_token) / tp


def weight_read_bytes(model) -> int:
    """Bytes of this rank's weights that one decode step reads: every parameter but the embedding table (a
    step gathers a few of its rows); int8 layers at one byte plus their scales, float ones at their dtype."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if not name.startswith("transformer.wte."))
