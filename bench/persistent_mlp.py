"""A layer's MLP as one persistent kernel with per-tile dependencies, against the engine's kernels (CUDA, Hopper).

    python bench/persistent_mlp.py [--layers 32] [--batches 16,64] [--configs ...] [--grids 172,264]

The question it answers: would a decode step get faster if the down projection (mlp.c_proj) took each
part of the gate/up output as it lands, instead of waiting at a kernel boundary for all of it? The
engine runs gate/up (SiLU-gated), mlp.c_proj (split K) and the reduce + residual + RMSNorm kernel. Here
one kernel does the first two: its programs take work items from an atomic counter, the gate/up tiles
first, then the down projection's split-K tiles. A gate/up tile stores its output and counts itself in on
its K chunk's counter (block barrier, release atomic); a down-projection tile of chunk s waits (acquire)
until every gate/up tile of chunk s is in. Items are taken in order, so every gate/up tile is held by a
running program before any wait begins: no deadlock. The engine's reduce + norm kernel follows.

Each config also runs with the waits removed ("no waits"): wrong results, but the perfect overlap, the
bound on what per-tile dependencies could buy. 32 layers' MLPs of random 7B weights in one CUDA graph;
the error column is against the engine's result. Findings: docs/benchmarks.md, sixteenth session.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from kernel_probe import FFN, H, copy_bw, graph_ms, rel_err  # bench/ on the path
from triton.tools.tensor_descriptor import TensorDescriptor

from inference.kernels.skinny import reduce_norm, skinny_linear


@triton.jit
def _mlp_kernel(x_desc, wgu_desc, wd_desc, act_ptr, ws_ptr, ctr_ptr, M,
                N: tl.constexpr, K: tl.constexpr, HO: tl.constexpr, S: tl.constexpr,
                BN1: tl.constexpr, BK1: tl.constexpr, BN2: tl.constexpr, BK2: tl.constexpr, BM: tl.constexpr,
                ST1: tl.constexpr, ST2: tl.constexpr, WAIT: tl.constexpr, PDL: tl.constexpr = True):
    """x [M, K] -> act = silu(x gate^T) * (x up^T) [M, N] -> float32 partials of act down^T, [S, M, HO].
    ctr_ptr: [0] the next work item, [1 + s] gate/up tiles done in K chunk s (zero before each launch)."""
    if PDL:  # programmatic launch, as the engine's kernels (off in Triton's interpreter)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    n_gu: tl.constexpr = N // BN1
    n_out: tl.constexpr = HO // BN2
    per_chunk: tl.constexpr = n_gu // S
    kt2: tl.constexpr = N // S // BK2
    offs_m = tl.arange(0, BM)
    m_ok = offs_m < M
    item = tl.atomic_add(ctr_ptr, 1, sem="relaxed")
    while item < n_gu + S * n_out:
        if item < n_gu:  # a gate/up tile: BN1 columns of act, all of K
            acc = tl.zeros((BN1, BM), dtype=tl.float32)
            acc_up = tl.zeros((BN1, BM), dtype=tl.float32)
            for t in tl.range(0, K // BK1, num_stages=ST1):
                x = x_desc.load([0, t * BK1])
                acc = tl.dot(wgu_desc.load([item * BN1, t * BK1]), x.T, acc)
                acc_up = tl.dot(wgu_desc.load([N + item * BN1, t * BK1]), x.T, acc_up)
            a = (acc / (1.0 + tl.exp(-acc)) * acc_up).to(act_ptr.dtype.element_ty)
            offs_n = item * BN1 + tl.arange(0, BN1)
            tl.store(act_ptr + offs_m[None, :] * N + offs_n[:, None], a, mask=m_ok[None, :])
            tl.debug_barrier()  # every thread's store before the count
            tl.atomic_add(ctr_ptr + 1 + item // per_chunk, 1, sem="release")
        else:  # a down-projection tile: BN2 output columns over K chunk s of act
            s = (item - n_gu) // n_out
            o = (item - n_gu) % n_out
            ready = tl.atomic_add(ctr_ptr + 1 + s, 0, sem="acquire") if WAIT else per_chunk
            while ready < per_chunk:
                ready = tl.atomic_add(ctr_ptr + 1 + s, 0, sem="acquire")
            tl.debug_barrier()
            acc2 = tl.zeros((BN2, BM), dtype=tl.float32)
            offs_k = tl.arange(0, BK2)
            for t in tl.range(s * kt2, (s + 1) * kt2, num_stages=ST2):
                a2 = tl.load(act_ptr + offs_m[None, :] * N + (t * BK2 + offs_k)[:, None], mask=m_ok[None, :],
                             other=0.0, cache_modifier=".cg")  # from L2: other programs wrote it
                acc2 = tl.dot(wd_desc.load([o * BN2, t * BK2]), a2, acc2)
            offs_o = o * BN2 + tl.arange(0, BN2)
            tl.store(ws_ptr + s * M * HO + offs_m[None, :] * HO + offs_o[:, None], acc2, mask=m_ok[None, :])
        item = tl.atomic_add(ctr_ptr, 1, sem="relaxed")


def persistent_mlp(x, wgu, wd, residual, nw, eps, ctr, config, grid, wait=True):
    """The engine's `skinny_linear(skinny_linear(x, wgu, gated=True), wd, norm=(residual, nw, eps))` through
    `_mlp_kernel` + the reduce + norm kernel. config = (gate/up rows, gate/up K tile, stages, down rows,
    down K tile, stages, K chunks); each chunk must be whole gate/up tiles and whole down K tiles."""
    bn1, bk1, st1, bn2, bk2, st2, s = config
    m = x.shape[0]
    if FFN % (bn1 * s) or (FFN // s) % bk2:
        raise ValueError(f"config {config}: a K chunk must be whole tiles of both matmuls")
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    act = torch.empty(m, FFN, dtype=x.dtype, device=x.device)
    ws = torch.empty(s, m, H, dtype=torch.float32, device=x.device)
    _mlp_kernel[(grid,)](
        TensorDescriptor(x, [m, H], [x.stride(0), 1], [bm, bk1]),
        TensorDescriptor(wgu, list(wgu.shape), [wgu.stride(0), 1], [bn1, bk1]),
        TensorDescriptor(wd, list(wd.shape), [wd.stride(0), 1], [bn2, bk2]),
        act, ws, ctr, m, N=FFN, K=H, HO=H, S=s, BN1=bn1, BK1=bk1, BN2=bn2, BK2=bk2, BM=bm, ST1=st1, ST2=st2,
        WAIT=wait, num_warps=4, launch_pdl=True)
    return reduce_norm(ws, (residual, nw, eps), torch.empty_like(x), on=True)


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="16,64")
    p.add_argument("--configs", default="16=64,128,3,64,128,4,2;16=64,128,3,64,64,6,4;64=128,64,5,64,128,6,2",
                   help="BATCH=bn1,bk1,st1,bn2,bk2,st2,chunks;...")
    p.add_argument("--grids", default="16=172,264;64=86,132", help="BATCH=programs,...;...")
    a = p.parse_args()
    torch.manual_seed(0)
    bw = copy_bw()
    L = [dict(gu=torch.randn(2 * FFN, H, device="cuda", dtype=torch.float16) * 0.02,
              d=torch.randn(H, FFN, device="cuda", dtype=torch.float16) * 0.02,
              nw=torch.rand(H, device="cuda", dtype=torch.float16) + 0.5) for _ in range(a.layers)]
    nbytes = sum(d["gu"].numel() * 2 + d["d"].numel() * 2 for d in L)
    configs = [(int(b), tuple(int(v) for v in c.split(","))) for b, c in (e.split("=") for e in a.configs.split(";"))]
    grids = {int(b): [int(v) for v in g.split(",")] for b, g in (e.split("=") for e in a.grids.split(";"))}
    rows = []
    for m in [int(v) for v in a.batches.split(",")]:
        x0 = torch.randn(m, H, device="cuda", dtype=torch.float16)
        r0 = torch.randn(m, H, device="cuda", dtype=torch.float16)

        def engine(x0=x0, r0=r0):
            h, r = x0, r0
            for d in L:
                h, r = skinny_linear(skinny_linear(h, d["gu"], gated=True), d["d"], norm=(r, d["nw"], 1e-6))
            return h
        ref = engine().clone()
        rows.append((m, "engine: gate/up, mlp.c_proj, reduce + norm", "", "", graph_ms(engine), 0.0))
        for config in [c for b, c in configs if b == m]:
            for grid in grids.get(m, [132]):
                for wait in (True, False):
                    ctrs = torch.zeros(a.layers, 1 + config[-1], dtype=torch.int32, device="cuda")

                    def fused(config=config, grid=grid, wait=wait, ctrs=ctrs, x0=x0, r0=r0):
                        ctrs.zero_()
                        h, r = x0, r0
                        for i, d in enumerate(L):
                            h, r = persistent_mlp(h, d["gu"], d["d"], r, d["nw"], 1e-6, ctrs[i], config, grid, wait)
                        return h
                    err = rel_err(fused(), ref)
                    rows.append((m, str(config), grid, "yes" if wait else "no", graph_ms(fused), err))
    print(f"\ncopy {bw / 1e3:.2f} TB/s; {a.layers} layers' MLP weights, {nbytes / 1e9:.2f} GB")
    print("| batch | kernels (persistent: bn1, bk1, st1, bn2, bk2, st2, chunks) | grid | waits | ms | GB/s | rel err |")
    print("|---|---|---|---|---|---|---|")
    for m, name, grid, wait, ms, err in rows:
        print(f"| {m} | {name} | {grid} | {wait} | {ms:.3f} | {nbytes / ms / 1e6:.0f} | {err:.1e} |")


if __name__ == "__main__":
    main()
