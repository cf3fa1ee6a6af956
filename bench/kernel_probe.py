"""Decode kernels in isolation on CUDA: batch-1 GEMVs (cuBLAS vs the Triton GEMV) and paged decode attention.

    python bench/kernel_probe.py [--layers 32] [--ctx 576]

1. Each 7B linear shape alone (one CUDA graph over 8 weight copies, so L2 does not serve repeats): error
   against float64 and time per matmul, cuBLAS vs Triton.
2. The whole batch-1 linear stack of a decode step (every layer's c_attn + bias, attn c_proj, gate/up with
   SiLU, mlp c_proj; then lm_head) captured in one CUDA graph: cuBLAS (+ the SiLU kernel) vs Triton GEMVs.
   Also cuBLAS at batch 16 and 64 for reference.
3. Paged decode attention at batch 1/16/64 over `--ctx` tokens, by number of splits: GB/s of K/V read.
(The batch 16 / 64 matmuls and their tiles: bench/skinny_probe.py.)
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

H, FFN, VOCAB, HEADS, DIM = 4096, 11008, 151936, 32, 128
SHAPES = [("c_attn", 3 * H, H, True, False), ("attn.c_proj", H, H, False, False),
          ("w2_w1 (gated)", 2 * FFN, H, False, True), ("mlp.c_proj", H, FFN, False, False),
          ("lm_head", VOCAB, H, False, False)]  # name, N, K, bias, gated (N: both halves of gate/up)


def copy_bw() -> float:
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median")
    return 2 * a.numel() / ms / 1e6  # GB/s


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def shape_inputs(m, n, k, bias, gated):
    """One linear shape timed alone: (copies, that many random weights [n, k] so that L2 does not serve
    repeats, bias or None, x [m, k], the float64 reference of x through the first)."""
    copies = 8 if n * k * 2 < 4 << 28 else 2
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
    b = torch.randn(n, device="cuda", dtype=torch.float16) if bias else None
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    ref = x.double() @ ws[0].double().T + (b.double() if bias else 0)
    if gated:
        g, u = ref.chunk(2, dim=-1)
        ref = F.silu(g) * u
    return copies, ws, b, x, ref


def part_shapes(bw):
    print("\n| shape | N x K | err cuBLAS | err Triton | cuBLAS us | Triton us | cuBLAS GB/s | Triton GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, k, bias, gated in SHAPES:
        copies, ws, b, x, ref = shape_inputs(1, n, k, bias, gated)
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
    return replay_ms(capture(fn), reps)


def replay_ms(g: torch.cuda.CUDAGraph, reps=20) -> float:
    """Median ms of `reps` timed replays of a captured graph, after 3 untimed ones."""
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


def part_attention(bw, ctx, layers, batches, bs=16):
    print(f"\nPaged decode attention, {HEADS} heads x {DIM}, context {ctx}, block size {bs}, caches of several "
          "layers in one CUDA graph; every (splits, BLOCK_N/warps/stages) candidate, best first:")
    print("| batch | chosen: splits, config, dot | chosen us | best CUDA-core form | us | best: splits, config, dot "
          "| us | best GB/s | % of copy bw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in batches:
        per_layer = 2 * (batch * -(-ctx // bs) + 7) * bs * HEADS * DIM * 2
        n_layers = max(2, min(layers, int(8e9 // per_layer)))
        caches, table, lens, q, nbytes = attention_inputs(batch, ctx, n_layers, bs)
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


def attention_inputs(b: int, ctx: int, n_layers: int, bs: int = 16):
    """Decode attention's inputs for `b` sequences at context `ctx`: `n_layers` layers' K/V caches in the
    engine's head-major layout, a random block table, the lengths and q; and the K/V bytes one pass over
    the layers reads."""
    nb = -(-ctx // bs)
    blocks = b * nb + 7
    caches = [tuple(torch.randn(blocks, HEADS, bs, DIM, device="cuda", dtype=torch.float16).permute(0, 2, 1, 3)
                    for _ in range(2)) for _ in range(n_layers)]
    table = (torch.randperm(blocks - 7, device="cuda")[:b * nb].view(b, nb) + 7).int()
    lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(b, HEADS, DIM, device="cuda", dtype=torch.float16)
    return caches, table, lens, q, 2 * b * ctx * HEADS * DIM * 2 * n_layers


def attention_layers(q, caches, table, lens, ctx, splits, cfg=None, dot=None):
    for kc, vc in caches:
        paged_decode_attention(q, kc, vc, table, lens, ctx, DIM**-0.5, splits=splits, config=cfg, dot=dot)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--ctx", type=int, default=576)
    p.add_argument("--parts", default="shapes,stack,attention")
    p.add_argument("--batches", default="1,4,16,32,64,128", help="attention: batch sizes")
    a = p.parse_args()
    bw = copy_bw()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s (read + write)")
    parts = a.parts.split(",")
    if "shapes" in parts:
        part_shapes(bw)
    if "stack" in parts:
        part_stack(bw, a.layers)
    if "attention" in parts:
        part_attention(bw, a.ctx, a.layers, [int(b) for b in a.batches.split(",")])
    from inference.kernels.gemv import _gemv_kernel  # noqa: PLC0415

    print("\nAutotune winners (key: config):")
    for key, cfg in _gemv_kernel.cache.items():
        print(f"  {key}: {cfg}")


if __name__ == "__main__":
    main()
