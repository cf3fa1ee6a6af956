"""Probe: the residual add + RMSNorm between decode matmuls without kernels of its own (batch 2-64, 7B shapes).

    python bench/norm_probe.py [--layers 32] [--batches 16,64] [--splits] [--small --check-only]

As is, each c_proj splits K in two and a reduce kernel sums the halves, adds the residual and normalizes
the row (`skinny._reduce_norm_kernel`): two such kernels a layer. Here instead c_proj runs unsplit and
its epilogue writes the new stream h = y + residual and each row's sum of squares over its tile; the next
matmul sums those partials (a few KB) into each row's 1/rms and normalizes its input tiles as it loads
them. Prints the linear stack (32 layers + lm_head, one CUDA graph) each way, and the error against the
as-is path. --splits: instead, the as-is stack with other K splits for c_attn and gate/up. Tried in the
eleventh session of 2026-11-29 and not kept (docs/benchmarks.md); the lambdas below are timed in the
loop that defines them (hence the B023 exemption).
"""
# ruff: noqa: B023

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from inference.kernels import pdl
from inference.kernels.skinny import _store, launch_fitted, skinny_linear

H, FFN, VOCAB = 4096, 11008, 151936
EPS = 1e-6


@triton.jit
def _proj_res_kernel(x_desc, w_desc, res_ptr, h_ptr, ssq_ptr, M, N, K, BLOCK_N: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(tl.cdiv(K, BLOCK_K)):
        x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K])
        acc = tl.dot(w_desc.load([pid_n * BLOCK_N, t * BLOCK_K]), x.T, acc)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    at = offs_m[None, :].to(tl.int64) * N + offs_n[:, None]
    h = acc.to(h_ptr.dtype.element_ty) + tl.load(res_ptr + at, mask=mask, other=0.0)
    tl.store(h_ptr + at, h, mask=mask)
    hf = h.to(tl.float32)
    tl.store(ssq_ptr + offs_m * tl.num_programs(0) + pid_n, tl.sum(hf * hf, 0), mask=offs_m < M)


@triton.jit
def _normed_kernel(x_desc, w_desc, b_ptr, ssq_ptr, g_ptr, y_ptr, best_ptr, M, N, K, T, eps,
                   HAS_BIAS: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr, FOLD: tl.constexpr, PDL: tl.constexpr):
    """y = norm(h) W^T with norm(h) = (h * rms).to(dtype) * g, rms from the row's T sum-of-squares partials."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tt = tl.arange(0, BLOCK_T)
    part = tl.load(ssq_ptr + offs_m[:, None] * T + tt[None, :], mask=(offs_m < M)[:, None] & (tt < T)[None, :],
                   other=0.0)
    rms = tl.rsqrt(tl.sum(part, 1) / K + eps)
    dt = y_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(tl.cdiv(K, BLOCK_K)):
        if FOLD:  # g folded into the weight; rms applied to the sums
            x = x_desc.load([pid_m * BLOCK_M, t * BLOCK_K])
        else:
            g = tl.load(g_ptr + t * BLOCK_K + tl.arange(0, BLOCK_K))
            x = (x_desc.load([pid_m * BLOCK_M, t * BLOCK_K]).to(tl.float32) * rms[:, None]).to(dt) * g[None, :]
        acc = tl.dot(w_desc.load([pid_n * BLOCK_N, t * BLOCK_K]), x.T, acc)
        if GATED:
            acc_up = tl.dot(w_desc.load([N + pid_n * BLOCK_N, t * BLOCK_K]), x.T, acc_up)
    if FOLD:
        acc = acc * tl.reshape(rms, (1, BLOCK_M))
        if GATED:
            acc_up = acc_up * tl.reshape(rms, (1, BLOCK_M))
    _store(acc, acc_up, b_ptr, y_ptr, best_ptr, M, N, N, 0, pid_n, 0, pid_m, HAS_BIAS, GATED, 1, BLOCK_N, BLOCK_M,
           False)


def proj_res(x, w, res, bn, bk, stages):
    """(h, ssq): h = x w^T + res, ssq [M, tiles] each tile's sum of squares of h's row."""
    m, k = x.shape
    n = w.shape[0]
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    h = torch.empty(m, n, dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(n, bn)
    ssq = torch.empty(m, tiles, dtype=torch.float32, device=x.device)
    on = pdl(x)

    def launch(st):
        _proj_res_kernel[(tiles, triton.cdiv(m, bm))](
            TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, bk]),
            TensorDescriptor(w, list(w.shape), [w.stride(0), 1], [bn, bk]), res, h, ssq, m, n, k,
            BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, PDL=on, launch_pdl=on, num_warps=4, num_stages=st)

    launch_fitted(("proj_res", bn, bm, bk, stages), stages, launch)
    return h, ssq


def normed(h, ssq, g, w, b=None, gated=False, cfg=(128, 128, 4), fold=False):
    m, k = h.shape
    n = w.shape[0] // 2 if gated else w.shape[0]
    bn, bk, stages = cfg
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    y = torch.empty(m, n, dtype=h.dtype, device=h.device)
    on = pdl(h)

    def launch(st):
        _normed_kernel[(triton.cdiv(n, bn), triton.cdiv(m, bm))](
            TensorDescriptor(h, [m, k], [h.stride(0), 1], [bm, bk]),
            TensorDescriptor(w, list(w.shape), [w.stride(0), 1], [bn, bk]), b if b is not None else w, ssq, g, y, y,
            m, n, k, ssq.shape[1], EPS, HAS_BIAS=b is not None, GATED=gated, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk,
            BLOCK_T=triton.next_power_of_2(ssq.shape[1]), FOLD=fold, PDL=on, launch_pdl=on, num_warps=4, num_stages=st)

    launch_fitted(("normed", bn, bm, bk, stages, gated, fold), stages, launch)
    return y


def weights(layers, dev):
    def w(*shape, s=0.02):
        return torch.randn(*shape, device=dev, dtype=torch.float16) * s

    L = [dict(qkv=w(3 * H, H), qkv_b=w(3 * H), o=w(H, H), gu=w(2 * FFN, H), d=w(H, FFN), g1=1 + w(H, s=0.1),
              g2=1 + w(H, s=0.1)) for _ in range(layers)]
    return L, w(VOCAB, H), 1 + w(H, s=0.1)


def as_is(L, head, gf, x, res, o=None, dn=None, qkv=None, gu=None):
    """The engine's path: h = norm'd stream in, each c_proj's split-K reduce adds and normalizes.
    o, dn: skinny configs for attn.c_proj and mlp.c_proj (None: the engine's)."""
    nxt = [d["g1"] for d in L[1:]] + [gf]
    for d, g_next in zip(L, nxt):
        q = skinny_linear(x, d["qkv"], d["qkv_b"], config=qkv)
        x, res = skinny_linear(q[:, :H].contiguous(), d["o"], norm=(res, d["g2"], EPS), config=o)
        a = skinny_linear(x, d["gu"], gated=True, config=gu)
        x, res = skinny_linear(a, d["d"], norm=(res, g_next, EPS), config=dn)
    return skinny_linear(x, head)


def deferred(L, head, gf, h, ssq, cfgs, fold=False, plain=False):
    """h: the raw stream, ssq its partials (the first layer's ln_1 still to apply). fold: the norm weight is
    taken as folded into the next matmul's weight (timing only: the weights are not changed), rms scales the
    sums; plain: the consumers are the plain skinny GEMM (timing only: no norm at all)."""
    nxt = [d["g1"] for d in L[1:]] + [gf]
    g_in = L[0]["g1"]

    def lin(h, ssq, g, w, b=None, gated=False, cfg=None):
        if plain:
            return skinny_linear(h, w, b, gated=gated)
        return normed(h, ssq, g, w, b, gated, cfg, fold)

    for d, g_next in zip(L, nxt):
        q = lin(h, ssq, g_in, d["qkv"], d["qkv_b"], cfg=cfgs["c_attn"])
        h, ssq = proj_res(q[:, :H].contiguous(), d["o"], h, *cfgs["o"])
        a = lin(h, ssq, d["g2"], d["gu"], gated=True, cfg=cfgs["gu"])
        h, ssq = proj_res(a, d["d"], h, *cfgs["d"])
        g_in = g_next
    return lin(h, ssq, g_in, head, cfg=cfgs["head"])


def graph_ms(fn, reps=30):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def default_cfgs(m, proj_bn):
    bm = 16 if m <= 16 else 64
    gu = (64, 128, 3) if 8 < m <= 16 else (128, 64, 4 if bm == 16 else 5)
    proj = (proj_bn, 256 if bm == 16 else 128, 6 if proj_bn == 32 else 4)
    return dict(c_attn=(128, 128, 4), gu=gu, head=(128, 128, 4 if bm == 16 else 3), o=proj, d=proj)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="16,64")
    p.add_argument("--splits", action="store_true", help="as is, with the c_projs' K split 2-4 ways")
    p.add_argument("--check-only", action="store_true", help="errors only (small sizes; the interpreter)")
    p.add_argument("--small", action="store_true", help="hidden 256, ffn 512, vocab 1000, on the CPU (interpreter)")
    a = p.parse_args()
    dev = "cuda"
    if a.small:
        global H, FFN, VOCAB
        H, FFN, VOCAB, dev = 256, 512, 1000, "cpu"
    torch.manual_seed(0)
    L, head, gf = weights(a.layers, dev)
    rows = []
    for m in map(int, a.batches.split(",")):
        stream = torch.randn(m, H, device=dev, dtype=torch.float16)
        from inference.kernels.fused import add_rmsnorm  # noqa: PLC0415

        x0, _ = add_rmsnorm(stream, None, L[0]["g1"], EPS)
        ref = as_is(L[:2], head, gf, x0, stream).double()
        hf = stream.float()
        ssq0 = (hf * hf).sum(1, keepdim=True).contiguous()
        for bn in (32, 64):
            cfgs = default_cfgs(m, bn)
            out = deferred(L[:2], head, gf, stream, ssq0, cfgs).double()
            err = ((out - ref).norm() / ref.norm()).item()
            rows.append((m, f"deferred norm, c_proj BN {bn}", err))
        if a.check_only:
            continue
        if a.splits:
            bm = 16 if m <= 16 else 64
            rows.append((m, "as is", graph_ms(lambda: as_is(L, head, gf, x0, stream))))
            st = 4 if bm == 16 else 3
            gu1 = (64, bm, 128, 4, 3, 1) if bm == 16 else (128, bm, 64, 4, 5, 1)
            for qkv, gu in (((128, bm, 128, 4, st, 2), None), ((128, bm, 128, 4, st, 4), None),
                            ((64, bm, 128, 4, st + 1, 2), None), ((128, bm, 128, 4, st, 11), None),
                            (None, gu1[:5] + (2,)), (None, gu1[:5] + (4,)), (None, (128, bm, 64, 4, 4, 2))):
                t = graph_ms(lambda: as_is(L, head, gf, x0, stream, qkv=qkv, gu=gu))
                rows.append((m, f"c_attn {qkv}, gate/up {gu}", t))
            rows.append((m, "as is", graph_ms(lambda: as_is(L, head, gf, x0, stream))))
            continue
        t0 = graph_ms(lambda: as_is(L, head, gf, x0, stream))
        rows.append((m, "as is (split-K reduce + norm)", t0))
        for bn in (32, 64):
            cfgs = default_cfgs(m, bn)
            for kind, kw in (("", {}), (", g folded", dict(fold=True)), (", no norm (c_proj alone)", dict(plain=True))):
                t = graph_ms(lambda: deferred(L, head, gf, stream, ssq0, cfgs, **kw))
                rows.append((m, f"deferred norm, c_proj BN {bn}{kind}", t))
        t1 = graph_ms(lambda: as_is(L, head, gf, x0, stream))
        rows.append((m, "as is, again", t1))
    print("| batch | variant | ms (stack) or rel. error vs as is |")
    print("|---|---|---|")
    for m, name, v in rows:
        print(f"| {m} | {name} | {v:.4g} |")


if __name__ == "__main__":
    main()
