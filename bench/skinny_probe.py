"""The batch 16 / 64 decode matmuls (the skinny tensor-core GEMM) on CUDA, and a search over their tiles.

    python bench/skinny_probe.py [--layers 32] [--batches 16,64] [--tiles deep|wide|occupancy]

1. Each 7B linear shape alone (one CUDA graph over several weight copies): error against float64 and time
   through cuBLAS, the skinny GEMM with per-thread copies, and through the TMA.
2. The whole linear stack of a decode step (32 layers + lm_head) in one CUDA graph: cuBLAS, the two forms,
   and the stack tuned shape by shape over a tile set (`skinny_candidates`: each shape's candidates tried
   in the stack, the best kept; a shape timed alone ranks tiles differently). It prints the tiles kept and
   `ABLATE_SPEC`, bench/ablate.py's arguments for trying them in the engine's decode step.
The copy bandwidth measured first is the yardstick.
"""

from __future__ import annotations

import argparse
import functools

import torch
from kernel_probe import (  # bench/ on the path
    SHAPES,
    H,
    copy_bw,
    cublas_op,
    each,
    graph_ms,
    rel_err,
    shape_inputs,
    stack_weights,
)

from inference.kernels.skinny import SMEM_BYTES, skinny_config, skinny_linear

ABLATE_CLASS = {"c_attn": "qkv", "attn.c_proj": "o", "w2_w1 (gated)": "gate_up", "mlp.c_proj": "down"}


def skinny_candidates(m, n, k, gated, mode="deep"):
    """Tiles to try for one shape: (BN, BM, BK, warps, stages, split), BM the heuristic's; K split in two as
    well where the output has few tiles. mode "deep": the deepest pipeline that fits and two stages less;
    "wide": 256-row weight tiles on two warpgroups (8 warps), which read the tokens' activations from L2
    half as often, K split up to 4 ways; "occupancy": the deepest pipelines that let 2 and 3 programs share
    a multiprocessor."""
    bm = skinny_config(m, n, k, torch.device("cuda"), gated)[1]
    out = []
    tiles = ((256, 64), (256, 128)) if mode == "wide" else ((64, 128), (128, 128), (128, 64), (64, 256), (64, 64))
    splits = ((1, 2, 4) if mode == "wide" else (1, 2)) if n <= 4096 else (1,)
    for bn, bk in tiles:
        stage = ((2 if gated else 1) * bn + bm) * bk * 2
        deepest = min(SMEM_BYTES // stage, 10)
        if mode == "occupancy":
            depths = {d for d in (SMEM_BYTES // 2 // stage, SMEM_BYTES // 3 // stage) if d >= 2}
        else:
            depths = {deepest, max(2, deepest - (1 if mode == "wide" else 2))} if deepest >= 2 else set()
        for stages in sorted(depths):
            out += [(bn, bm, bk, 8 if mode == "wide" else 4, stages, split) for split in splits]
    return out


def part_skinny(bw, layers, batches=(16, 64), mode="deep"):
    """Batch 16 and 64: each 7B shape alone through cuBLAS and the skinny GEMM (per-thread copies, TMA), then
    the whole linear stack in one graph: cuBLAS, the two forms, and the stack tuned shape by shape (each
    shape's candidates tried in the stack, the best kept: a shape alone ranks tiles differently)."""
    print("\n| batch | shape | err | cuBLAS us | copies us | TMA us | TMA GB/s, % of copy bw |")
    print("|---|---|---|---|---|---|---|")
    for m in batches:
        for name, n, k, bias, gated in SHAPES:
            copies, ws, b, x, ref = shape_inputs(m, n, k, bias, gated)
            err = rel_err(skinny_linear(x, ws[0], b, gated=gated), ref)
            us = [graph_ms(functools.partial(each, op, x, ws, b, gated)) * 1000 / copies
                  for op in (cublas_op, functools.partial(skinny_op, tma=False), skinny_op)]
            gbs = n * k * 2 / us[2] / 1e3
            print(f"| {m} | {name} | {err:.1e} | " + " | ".join(f"{t:.1f}" for t in us) + f" | {gbs:.0f}, "
                  f"{100 * gbs / bw:.1f} |")
            del ws
    L, head, nbytes = stack_weights(layers)

    def stack(m, variant, cfgs=None):
        x = torch.randn(m, H, device="cuda", dtype=torch.float16)

        def lin(h, w, b=None, gated=False, name=""):
            if variant == "cublas":
                return cublas_op(h, w, b, gated)
            return skinny_linear(h, w, b, gated=gated, config=(cfgs or {}).get(name), tma=variant != "copies")

        def fn():
            h = x
            for d in L:
                q = lin(h, d["qkv"], d["qkv_b"], name="c_attn")
                h = lin(q[:, :H], d["o"], name="attn.c_proj")
                h = lin(lin(h, d["gu"], gated=True, name="w2_w1 (gated)"), d["d"], name="mlp.c_proj")
            return lin(h, head, name="lm_head")
        return graph_ms(fn)

    print(f"\nLinear stack, {layers} layers + lm_head ({nbytes / 1e9:.2f} GB), one CUDA graph:")
    print("| batch | variant | ms | GB/s | % of copy bw |")
    print("|---|---|---|---|---|")

    def row(m, variant, ms):
        print(f"| {m} | {variant} | {ms:.3f} | {nbytes / ms / 1e6:.0f} | {nbytes / ms / 1e4 / bw:.1f} |")

    for m in batches:
        for variant in ("cublas", "copies", "TMA"):
            best = stack(m, variant)
            row(m, variant, best)  # the last, TMA with the default tiles, is where the tuning starts
        dev = torch.device("cuda")
        cfgs = {name: skinny_config(m, n // 2 if gated else n, k, dev, gated) for name, n, k, _, gated in SHAPES}
        defaults = dict(cfgs)
        for name, n, k, _, gated in SHAPES[:4]:  # lm_head streams at the copy bandwidth already
            for cand in skinny_candidates(m, n // 2 if gated else n, k, gated, mode):
                try:
                    ms = stack(m, "TMA", {**cfgs, name: cand})
                except Exception as e:  # noqa: BLE001 (out of shared memory)
                    print(f"  {name} {cand}: {type(e).__name__}")
                    continue
                if mode != "deep":
                    print(f"  {name} {cand}: {ms:.3f} ms")
                if ms < best:
                    best, cfgs[name] = ms, cand
        row(m, "TMA, tuned in the stack", best)
        print(f"  tuned at batch {m}: " + ", ".join(f"{name} {cfg}" for name, cfg in cfgs.items()))
        spec = [f"--skinny {ABLATE_CLASS[name]}={c[0]},{c[2]},{c[4]},{c[5]},{c[3]}" for name, c in cfgs.items()
                if name in ABLATE_CLASS and c != defaults[name]]
        print(f"ABLATE_SPEC {m}: {' '.join(spec)}")  # bench/ablate.py's arguments for these tiles in the engine


def skinny_op(x, w, b, gated, tma=None):
    return skinny_linear(x, w, b, gated=gated, tma=tma)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="16,64")
    p.add_argument("--tiles", default="deep", choices=["deep", "wide", "occupancy"],
                   help="the tile set tuned over (see skinny_candidates)")
    a = p.parse_args()
    bw = copy_bw()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s (read + write)")
    part_skinny(bw, a.layers, [int(b) for b in a.batches.split(",")], a.tiles)


if __name__ == "__main__":
    main()
