"""Does the weights' memory layout move the skinny GEMM's bandwidth? (CUDA, Hopper: through the TMA.)

    python bench/layout_probe.py [--batches 16,64] [--layers 32]

The decode matmuls read a [BLOCK_N, BLOCK_K] box of a row-major [N, K] weight a pipeline stage: BLOCK_N
runs of 256-512 bytes, one per weight row. Tiled, the same box is 16-32 KB in one piece (tile (n, k) of a
program stored right after tile (n, k - 1); a gated weight's gate and up tiles side by side), so a program
streams one contiguous range. Both kernels do the same arithmetic in the same order (results compared bit
for bit), with the engine's tiles (`skinny_config`) and programmatic launch; the 7B linear stack
(c_attn + bias, attn.c_proj, gate/up with SiLU, mlp.c_proj; the split-K partials left unreduced in both)
over `--layers` layers of distinct weights, captured in one CUDA graph, replays alternated. Prints one table.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from inference.kernels.skinny import _skinny_tma_kernel, _store, skinny_config

H, FFN = 4096, 11008
SHAPES = [("c_attn", 3 * H, H, True, False), ("attn.c_proj", H, H, False, False),
          ("gate/up", FFN, H, False, True), ("mlp.c_proj", H, FFN, False, False)]


@triton.jit
def _tiled_kernel(x_desc, w_desc, b_ptr, y_ptr, best_ptr, M, N, K, stride_ym, stride_ys,
                  HAS_BIAS: tl.constexpr, GATED: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr, ARGMAX: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * per_split
    t1 = tl.minimum(t0 + per_split, k_tiles)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t0, t1):
        x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K])
        row = (pid_n * k_tiles + t) * (2 if GATED else 1) * BLOCK_N
        acc = tl.dot(w_desc.load([row, 0]), x.T, acc)
        if GATED:
            acc_up = tl.dot(w_desc.load([row + BLOCK_N, 0]), x.T, acc_up)
    _store(acc, acc_up, b_ptr, y_ptr, best_ptr, M, N, stride_ym, stride_ys, pid_n, pid_k, pid_m, HAS_BIAS, GATED,
           SPLIT_K, BLOCK_N, BLOCK_M, ARGMAX)


def tile(w: torch.Tensor, bn: int, bk: int, gated: bool) -> torch.Tensor:
    """[N, K] (gated: [gate; up], 2N rows) -> [tiles * BLOCK_N, BLOCK_K], tile (n, k) at (n * k_tiles + k)."""
    parts = w.chunk(2) if gated else (w,)
    n, k = parts[0].shape
    blocks = [p.view(n // bn, bn, k // bk, bk).permute(0, 2, 1, 3) for p in parts]  # [nt, kt, bn, bk]
    return torch.stack(blocks, 2).reshape(-1, bk).contiguous()  # [nt, kt, 1|2, bn, bk]


def launch(x, w, b, out, cfg, n, k, gated, tiled):
    bn, bm, bk, warps, stages, split = cfg
    m = x.shape[0]
    grid = (triton.cdiv(n, bn), split, triton.cdiv(m, bm))
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, bk])
    w_desc = TensorDescriptor(w, list(w.shape), [w.stride(0), 1], [bn, bk])
    kernel = _tiled_kernel if tiled else _skinny_tma_kernel
    kernel[grid](x_desc, w_desc, b if b is not None else w, out, out, m, n, k, out.stride(-2),
                 out.stride(0) if split > 1 else 0, HAS_BIAS=b is not None, GATED=gated, SPLIT_K=split,
                 BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps, num_stages=stages, PDL=True,
                 launch_pdl=True, ARGMAX=False)


def copy_bw() -> float:
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    c = torch.empty_like(a)
    return 2 * a.numel() / triton.testing.do_bench(lambda: c.copy_(a), warmup=50, rep=200, return_mode="median") / 1e6


def run_batch(batch: int, layers: list, reps: int) -> list[tuple]:
    dev = layers[0][0][0].device
    cfgs = [skinny_config(batch, n, k, dev, g) for _, n, k, _, g in SHAPES]
    tiled = [[tile(w, cfg[0], cfg[2], g) for (w, _), cfg, (_, _, _, _, g) in zip(layer, cfgs, SHAPES)]
             for layer in layers]
    xs = {k: torch.randn(batch, k, device=dev, dtype=torch.float16) for k in (H, FFN)}
    outs = {v: [torch.zeros(cfg[5], batch, (2 if g else 1) * n, device=dev,
                            dtype=torch.float32 if cfg[5] > 1 else torch.float16)
                for cfg, (_, n, _, _, g) in zip(cfgs, SHAPES)] for v in (False, True)}

    def stack(variant, only=None):
        for li, layer in enumerate(layers):
            for si, ((w, b), cfg, (_, n, k, _, g)) in enumerate(zip(layer, cfgs, SHAPES)):
                if only is None or si == only:
                    out = outs[variant][si]
                    launch(xs[k], tiled[li][si] if variant else w, b, out if cfg[5] > 1 else out[0], cfg, n, k, g,
                           variant)

    graphs = {}
    for key in [(v, None) for v in (False, True)] + [(v, s) for s in range(len(SHAPES)) for v in (False, True)]:
        stack(*key)
        torch.cuda.synchronize()
        graphs[key] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[key]):
            stack(*key)
    graphs[(False, None)].replay()
    graphs[(True, None)].replay()
    torch.cuda.synchronize()
    same = all(torch.equal(a, b) for a, b in zip(outs[False], outs[True]))
    times = {k: [] for k in graphs}
    for _ in range(reps):
        for key, g in graphs.items():
            g.replay()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            g.replay()
            e.record()
            e.synchronize()
            times[key].append(s.elapsed_time(e))
    rows = []
    for si in [None, *range(len(SHAPES))]:
        nbytes = sum(layer[i][0].numel() * 2 for layer in layers for i in range(len(SHAPES)) if si in (None, i))
        ms = [statistics.median(times[(v, si)]) for v in (False, True)]
        rows.append((batch, "stack" if si is None else SHAPES[si][0], "" if si is None else str(cfgs[si]),
                     ms[0], ms[1], nbytes / ms[0] / 1e6, nbytes / ms[1] / 1e6, same))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    bw = copy_bw()
    dev = torch.device("cuda")
    layers = [[(torch.randn((2 if g else 1) * n, k, device=dev, dtype=torch.float16) * 0.02,
                torch.randn(n, device=dev, dtype=torch.float16) if bias else None)
               for _, n, k, bias, g in SHAPES] for _ in range(args.layers)]
    total = sum(w.numel() * 2 for layer in layers for w, _ in layer)
    rows = [row for b in args.batches.split(",") for row in run_batch(int(b), layers, args.reps)]
    print(f"\ncopy bandwidth {bw:.0f} GB/s, {args.layers} layers, {total / 1e9:.2f} GB of weights\n")
    print("| batch | matmuls | (bn, bm, bk, warps, stages, split) | row-major ms | tiled ms | row-major GB/s | "
          "tiled GB/s | tiled/row-major | same bits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, name, cfg, m0, m1, g0, g1, same in rows:
        print(f"| {b} | {name} | {cfg} | {m0:.3f} | {m1:.3f} | {g0:.0f} | {g1:.0f} | {m1 / m0:.3f} | {same} |")


if __name__ == "__main__":
    main()
