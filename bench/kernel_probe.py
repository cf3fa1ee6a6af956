"""Decode kernels in isolation on CUDA: batch-1 GEMVs (cuBLAS vs the Triton GEMV) and paged decode attention.

    python bench/kernel_probe.py [--layers 32] [--ctx 576]

1. Each 7B linear shape alone (one CUDA graph over 8 weight copies, so L2 does not serve repeats): error
   against float64 and time per matmul, cuBLAS vs Triton.
2. The whole batch-1 linear stack of a decode step (every layer's c_attn + bias, attn c_proj, gate/up with
   SiLU, mlp c_proj; then lm_head) captured in one CUDA graph: cuBLAS (+ the SiLU kernel) vs Triton GEMVs.
   Also cuBLAS at batch 16 and 64 for reference.
3. Paged decode attention at batch 1/16/64 over `--ctx` tokens, by number of splits: GB/s of K/V read.
4. (--parts skinny [--skinny-batches 16,64] [--tiles deep|wide|occupancy]) The batch 16 / 64 matmuls, per
   shape and as a stack: cuBLAS, the skinny GEMM with per-thread copies and through the TMA, and the stack
   tuned shape by shape over the chosen tile set (`skinny_candidates`), with ablate.py's arguments for the
   tiles it kept (`ABLATE_SPEC`).
Prints one table per part; the copy bandwidth measured first is the yardstick.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from inference.kernels.fused import silu_mul
from inference.kernels.gemv import gemv
from inference.kernels.paged_attention import CONFIGS, decode_config, num_splits, paged_decode_attention, use_dot
from inference.kernels.skinny import SMEM_BYTES, skinny_config, skinny_linear

H, FFN, VOCAB, HEADS, DIM = 4096, 11008, 151936, 32, 128


def copy_bw() -> float:
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median")
    return 2 * a.numel() / ms / 1e6  # GB/s


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def part_shapes(bw):
    shapes = [("c_attn", 3 * H, H, True, False), ("attn.c_proj", H, H, False, False),
              ("w2_w1 (gated)", 2 * FFN, H, False, True), ("mlp.c_proj", H, FFN, False, False),
              ("lm_head", VOCAB, H, False, False)]
    print("\n| shape | N x K | err cuBLAS | err Triton | cuBLAS us | Triton us | cuBLAS GB/s | Triton GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, k, bias, gated in shapes:
        copies = 8 if n * k * 2 < 4 << 28 else 2
        ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
        b = torch.randn(n, device="cuda", dtype=torch.float16) if bias else None
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = x.double() @ ws[0].double().T + (b.double() if bias else 0)
        if gated:
            g, u = ref.chunk(2, dim=-1)
            ref = F.silu(g) * u

        e_t = rel_err(cublas_op(x, ws[0], b, gated), ref)
        e_g = rel_err(gemv(x, ws[0], b, gated=gated), ref)
        t_t = graph_ms(functools.partial(each, cublas_op, x, ws, b, gated)) * 1000 / copies
        t_g = graph_ms(functools.partial(each, triton_op, x, ws, b, gated)) * 1000 / copies
        nbytes = n * k * 2
        print(f"| {name} | {n} x {k} | {e_t:.1e} | {e_g:.1e} | {t_t:.1f} | {t_g:.1f} | {nbytes / t_t / 1e3:.0f} | "
              f"{nbytes / t_g / 1e3:.0f} |")


def cublas_op(x, w, b, gated):
    y = F.linear(x, w, b)
    return silu_mul(y) if gated else y


def triton_op(x, w, b, gated):
    return gemv(x, w, b, gated=gated)


def each(op, x, ws, b, gated):
    for w in ws:
        op(x, w, b, gated)


def capture(fn) -> torch.cuda.CUDAGraph:
    """fn run twice on a side stream (compilation, autotuning), then captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_ms(fn, reps=20) -> float:
    g = capture(fn)
    for _ in range(3):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def stack_weights(layers):
    """Random fp16 weights of the 7B linear stack: (per-layer dicts, lm_head, bytes in all)."""
    def w(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.float16) * 0.02

    L = [dict(qkv=w(3 * H, H), qkv_b=w(3 * H), o=w(H, H), gu=w(2 * FFN, H), d=w(H, FFN)) for _ in range(layers)]
    head = w(VOCAB, H)
    return L, head, sum(t.numel() * 2 for d in L for t in d.values()) + head.numel() * 2


def part_stack(bw, layers):
    L, head, nbytes = stack_weights(layers)

    def stack(batch, triton, layers=L, head=head):
        x = torch.randn(batch, H, device="cuda", dtype=torch.float16)

        def fn():
            h = x
            for d in layers:
                if triton:
                    q = gemv(h, d["qkv"], d["qkv_b"])
                    h = gemv(q[:, :H], d["o"])
                    h = gemv(gemv(h, d["gu"], gated=True), d["d"])
                else:
                    q = F.linear(h, d["qkv"], d["qkv_b"])
                    h = F.linear(q[:, :H], d["o"])
                    h = F.linear(silu_mul(F.linear(h, d["gu"])), d["d"])
            return F.linear(h, head) if not triton else gemv(h, head)
        return fn

    print(f"\nLinear stack of one decode step ({layers} layers + lm_head, {nbytes / 1e9:.2f} GB), one CUDA graph:")
    print("| variant | ms | GB/s | % of copy bw | tok/s at batch 1 if alone |")
    print("|---|---|---|---|---|")
    for name, batch, tr in (("cuBLAS batch 1", 1, False), ("Triton GEMV batch 1", 1, True),
                            ("cuBLAS batch 16", 16, False), ("cuBLAS batch 64", 64, False)):
        ms = graph_ms(stack(batch, tr))
        gbs = nbytes / ms / 1e6
        print(f"| {name} | {ms:.3f} | {gbs:.0f} | {100 * gbs / bw:.1f} | {1000 / ms:.1f} |")


SHAPES = [("c_attn", 3 * H, H, True, False), ("attn.c_proj", H, H, False, False),
          ("w2_w1 (gated)", 2 * FFN, H, False, True), ("mlp.c_proj", H, FFN, False, False),
          ("lm_head", VOCAB, H, False, False)]


ABLATE_CLASS = {"c_attn": "qkv", "attn.c_proj": "o", "w2_w1 (gated)": "gate_up", "mlp.c_proj": "down"}
SHAPE_NK = {name: (n // 2 if gated else n, k) for name, n, k, _, gated in SHAPES}


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
            copies = 8 if n * k * 2 < 4 << 28 else 2
            ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
            b = torch.randn(n, device="cuda", dtype=torch.float16) if bias else None
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.double() @ ws[0].double().T + (b.double() if bias else 0)
            if gated:
                g, u = ref.chunk(2, dim=-1)
                ref = F.silu(g) * u
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
                if name in ABLATE_CLASS and c != skinny_config(m, *SHAPE_NK[name], dev, "gated" in name)]
        print(f"ABLATE_SPEC {m}: {' '.join(spec)}")  # bench/ablate.py's arguments for these tiles in the engine


def skinny_op(x, w, b, gated, tma=None):
    return skinny_linear(x, w, b, gated=gated, tma=tma)


def part_attention(bw, ctx, layers, batches, bs=16):
    print(f"\nPaged decode attention, {HEADS} heads x {DIM}, context {ctx}, block size {bs}, caches of several "
          "layers in one CUDA graph; every (splits, BLOCK_N/warps/stages) candidate, best first:")
    print("| batch | chosen: splits, config, dot | chosen us | best CUDA-core form | us | best: splits, config, dot "
          "| us | best GB/s | % of copy bw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in batches:
        nb = -(-ctx // bs)
        blocks = batch * nb + 7
        per_layer = 2 * blocks * bs * HEADS * DIM * 2
        n_layers = max(2, min(layers, int(8e9 // per_layer)))
        caches = [(torch.randn(blocks, HEADS, bs, DIM, device="cuda", dtype=torch.float16).permute(0, 2, 1, 3),
                   torch.randn(blocks, HEADS, bs, DIM, device="cuda", dtype=torch.float16).permute(0, 2, 1, 3))
                  for _ in range(n_layers)]
        table = (torch.randperm(blocks - 7, device="cuda")[:batch * nb].view(batch, nb) + 7).int()
        lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, HEADS, DIM, device="cuda", dtype=torch.float16)
        nbytes = 2 * batch * ctx * HEADS * DIM * 2 * n_layers
        ref = paged_decode_attention(q, *caches[0], table, lens, ctx, DIM**-0.5, splits=1).float()
        engine_dot = use_dot(q)
        engine_splits = num_splits(q, engine_dot)
        chosen = (engine_splits, decode_config(batch, engine_splits, engine_dot), engine_dot)
        times = {}
        for splits in (1, 2, 4, 8):
            for cfg in CONFIGS:
                for dot in (False, True):
                    out = paged_decode_attention(q, *caches[0], table, lens, ctx, DIM**-0.5, splits=splits, config=cfg,
                                                 dot=dot)
                    if rel_err(out, ref) > (3e-3 if dot else 1e-3):
                        print(f"  batch {batch} splits {splits} {cfg} dot {dot}: err {rel_err(out, ref):.1e}")
                    times[(splits, cfg, dot)] = graph_ms(functools.partial(
                        attention_layers, q, caches, table, lens, ctx, splits, cfg, dot)) * 1000 / n_layers
        best = min(times, key=times.get)
        cores = min((k for k in times if not k[2]), key=times.get)
        gbs = nbytes / n_layers / times[best] / 1e3
        print(f"| {batch} | {chosen} | {times[chosen]:.1f} | {cores[0]}, {cores[1]} | {times[cores]:.1f} | {best} "
              f"| {times[best]:.1f} | {gbs:.0f} | {100 * gbs / bw:.1f} |")
        del caches


def attention_layers(q, caches, table, lens, ctx, splits, cfg=None, dot=None):
    for kc, vc in caches:
        paged_decode_attention(q, kc, vc, table, lens, ctx, DIM**-0.5, splits=splits, config=cfg, dot=dot)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--ctx", type=int, default=576)
    p.add_argument("--parts", default="shapes,stack,attention")
    p.add_argument("--batches", default="1,4,16,32,64,128", help="attention: batch sizes")
    p.add_argument("--skinny-batches", default="16,64", help="skinny: batch sizes")
    p.add_argument("--tiles", default="deep", choices=["deep", "wide", "occupancy"],
                   help="skinny: the tiles tuned over (see skinny_candidates)")
    a = p.parse_args()
    bw = copy_bw()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s (read + write)")
    parts = a.parts.split(",")
    if "shapes" in parts:
        part_shapes(bw)
    if "stack" in parts:
        part_stack(bw, a.layers)
    if "skinny" in parts:
        part_skinny(bw, a.layers, [int(b) for b in a.skinny_batches.split(",")], a.tiles)
    if "attention" in parts:
        part_attention(bw, a.ctx, a.layers, [int(b) for b in a.batches.split(",")])
    from inference.kernels.gemv import _gemv_kernel  # noqa: PLC0415

    print("\nAutotune winners (key: config):")
    for key, cfg in _gemv_kernel.cache.items():
        print(f"  {key}: {cfg}")


if __name__ == "__main__":
    main()
