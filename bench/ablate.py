"""Upper bounds of fusing kernels away: the decode step's time with a class of kernels skipped (wrong
results, timing only). What a fusion can save at most is the step time it loses when its kernels are gone.

python bench/ablate.py --variant none|norm|rope|reducenorm|splitk|combine|attention|small|matmuls[,...]
    [--batches 16,64]
    [--attn SPLITS,BLOCK_N,WARPS,STAGES [--attn-from B] [--dot 0|1]] [--attn-pdl 0] [--kv-blocks N]
    [--skinny lm_head|down|o|gate_up|qkv=BLOCK_N,BLOCK_K,STAGES,SPLIT_K[,WARPS]] [--block-size N] [--profile]
    [--gemv BLOCK_N,BLOCK_K,WARPS,STAGES]  (every batch-1 GEMV with these tiles instead of autotuning;
               without it the autotuner's winners are printed)
    [--boundary]  (engine step against back-to-back graph replays, and the device timeline between steps)
    [--ncu]   (one steady step of the last batch between cudaProfilerStart / Stop, for Nsight Compute:
               ncu --profile-from-start off --clock-control none ... python bench/ablate.py --ncu; then
               python bench/ncu_table.py on its CSV)

  norm       the fused residual add + RMSNorm (2 a layer) returns its input
  rope       rotary + K/V store (1 a layer) returns views of the fused QKV output
  reducenorm the split-K reduce + residual add + RMSNorm kernel (2 a layer at batch 16) is not launched
  embedding  the token embedding by F.embedding (its index_select) instead of indexing (same result)
  splitk     skinny GEMMs never split K (no reduce kernels; fewer tiles in flight)
  combine    decode attention unsplit (no combine kernel)
  attention  decode attention returns q
  small      norm + rope + splitk + combine together
  matmuls    small + attention: only the matmuls (and the step's embedding, lm_head, sampling) are left
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from profile_engine import (  # bench/ is on the path of a script run from it
    clear,
    decode_graph,
    print_gaps,
    prompts,
    random_engine,
    steady,
)

from inference.config import SamplingParams

GROUPS = {"small": ["norm", "rope", "splitk", "combine"], "matmuls": ["norm", "rope", "splitk", "combine", "attention"]}


def patch(kind: str) -> None:
    import inference.kernels.fused as fused  # noqa: PLC0415
    import inference.kernels.paged_attention as pa  # noqa: PLC0415
    import inference.kernels.skinny as skinny  # noqa: PLC0415

    if kind == "norm":
        fused.add_rmsnorm = lambda x, residual, weight, eps: (x, x)
    elif kind == "rope":
        def rope(qkv, cos, sin, logn, k_cache, v_cache, slot_mapping, num_heads, head_dim):
            v = qkv.view(qkv.shape[0], 3, num_heads, head_dim)
            return v[:, 0], v[:, 1]
        fused.rope_and_store = rope
    elif kind == "embedding":  # the token embedding through F.embedding again (A/B of the indexing form)
        from inference.layers.embed_head import VocabParallelEmbedding  # noqa: PLC0415
        VocabParallelEmbedding.forward = lambda self, ids: torch.nn.functional.embedding(ids, self.weight)
    elif kind == "reducenorm":
        class Skip:
            def __getitem__(self, grid):
                return lambda *a, **k: None
        skinny._reduce_norm_kernel = Skip()
    elif kind == "splitk":
        config = skinny.skinny_config
        skinny.skinny_config = lambda *a, **k: (*config(*a, **k)[:5], 1)
    elif kind == "combine":
        splits = pa.num_splits
        pa.num_splits = lambda q, dot=False: 1 if q.shape[0] > 4 else splits(q, dot)
    elif kind == "attention":
        pa.paged_decode_attention = lambda q, *a, **k: q
    elif kind != "none":
        raise ValueError(f"unknown variant {kind}")


def patch_attention(attn: str, attn_pdl: bool, start: int = 5, dot: int | None = None) -> None:
    """Decode attention from batch `start` with fixed splits and tiles (and the tensor-core form or not),
    and / or without programmatic launch."""
    import inference.kernels.paged_attention as pa  # noqa: PLC0415

    if attn:
        sp, *cfg = (int(v) for v in attn.split(","))
        splits, config, use_dot = pa.num_splits, pa.decode_config, pa.use_dot
        pa.num_splits = lambda q, dot=False: sp if q.shape[0] >= start else splits(q, dot)
        pa.decode_config = lambda b, s, dot=False: tuple(cfg) if b >= start else config(b, s, dot)
        if dot is not None:
            pa.use_dot = lambda q: bool(dot) if q.shape[0] >= start else use_dot(q)
    if not attn_pdl:
        pa.pdl = lambda x: False


def step_ms(engine, batch: int, steps: int = 30) -> float:
    for p in prompts(batch, 512, batch):
        engine.add_request(p, SamplingParams(max_new_tokens=steps + 80, ignore_eos=True))
    while any(s.in_prefill or s.num_computed == 0 for s in engine.seqs.values()):
        engine.step()
    for _ in range(40):  # context 512 -> ~576, the middle of the 512 / 128 case
        engine.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) / steps * 1000
    clear(engine)
    return ms


def patch_skinny(spec: str) -> None:
    """One class of decode matmul with the given tiles (BLOCK_M stays the token count's) and warps."""
    import inference.kernels.skinny as skinny  # noqa: PLC0415

    cls, tiles = spec.split("=")
    bn, bk, stages, split, *warps = (int(v) for v in tiles.split(","))
    config = skinny.skinny_config

    def pick(m, n, k, device, gated=False):
        got = config(m, n, k, device, gated)
        kind = ("lm_head" if n >= 32768 else "down" if k > 2 * n else "o" if n <= 4096 else "gate_up" if gated
                else "qkv")
        return (bn, got[1], bk, warps[0] if warps else got[3], stages, split) if kind == cls else got
    skinny.skinny_config = pick


def patch_gemv(spec: str) -> None:
    """Every batch-1 GEMV with one config: the autotuner, left one candidate, takes it without timing."""
    import triton  # noqa: PLC0415

    from inference.kernels.gemv import _gemv_kernel  # noqa: PLC0415

    bn, bk, warps, stages = (int(v) for v in spec.split(","))
    _gemv_kernel.configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)]


def profile_step(engine, batch: int) -> None:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    steady(engine, batch, 100)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.step()
        torch.cuda.synchronize()
    print_gaps(prof, top=4)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50))


def _timeline(run, n: int):
    """CUDA events (kernels and copies) of n calls of run, sorted by start."""
    from torch.autograd import DeviceType  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            run()
        torch.cuda.synchronize()
    return sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)


def boundary(engine, batch: int, steps: int = 30) -> None:
    """What a step costs beyond its graph: back-to-back replays of the decode graph against engine steps
    (timed, then profiled: device idle and time by kernel a step, and the timeline across a step's end)."""
    from collections import defaultdict  # noqa: PLC0415

    steady(engine, batch, 200)
    g = decode_graph(engine, batch)

    def timed(run):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps * 1000

    r1, e1, r2 = timed(g.replay), timed(engine.step), timed(g.replay)
    print(f"BOUNDARY batch {batch}: replays {r1:.3f} ms, engine steps {e1:.3f} ms, replays after {r2:.3f} ms",
          flush=True)
    n = 6
    sides = {"replay": _timeline(g.replay, n), "engine": _timeline(engine.step, n)}
    by = {}
    for side, ev in sides.items():
        span = (ev[-1].time_range.end - ev[0].time_range.start) / n
        idle, busy_until = [], ev[0].time_range.end  # gaps after everything before has ended (kernels overlap)
        for a, b in zip(ev, ev[1:]):
            busy_until = max(busy_until, a.time_range.end)
            idle.append((b.time_range.start - busy_until, a.name, b.name))
        gaps = sorted((gp for gp in idle if gp[0] > 0), reverse=True)
        print(f"  {side}: {span:.1f} us a step on the device, idle {sum(gp[0] for gp in gaps) / n:.1f} us a step; "
              "largest: " + ", ".join(f"{gp[0]:.0f} us before {gp[2][:28]}" for gp in gaps[:3]))
        t = defaultdict(float)
        for e in ev:
            t[e.name[:40]] += (e.time_range.end - e.time_range.start) / n
        by[side] = t
    for name in sorted(by["engine"], key=lambda k: -by["engine"][k])[:12]:
        print(f"  {name:40s} replay {by['replay'].get(name, 0.0):8.1f} us  engine {by['engine'][name]:8.1f} us")
    ev = sides["engine"]
    big = [i for i, e in enumerate(ev) if "skinny" in e.name and e.time_range.end - e.time_range.start > 240]
    if big:  # lm_head (~290 us at batch 16) to the next step's first layer
        t0 = ev[big[0]].time_range.end
        for e in ev[big[0]: big[0] + 12]:
            print(f"  {(e.time_range.start - t0):9.1f} us  {e.time_range.end - e.time_range.start:7.1f} us  "
                  f"{e.name[:80]}")
    clear(engine)


def ncu_step(engine, batch: int) -> None:
    """One steady decode step at context ~576 inside the profiler range (`ncu --profile-from-start off`)."""
    steady(engine, batch, 100)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    engine.step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--variant", default="none")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--attn", default="")
    ap.add_argument("--attn-from", type=int, default=5)
    ap.add_argument("--dot", type=int, default=None)
    ap.add_argument("--skinny", action="append", default=[], help="repeatable: one matmul class each")
    ap.add_argument("--attn-pdl", type=int, default=1)
    ap.add_argument("--kv-blocks", type=int, default=None)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--gemv", default="", help="BLOCK_N,BLOCK_K,WARPS,STAGES for every batch-1 GEMV")
    ap.add_argument("--boundary", action="store_true", help="engine step against graph replay, and the timeline")
    a = ap.parse_args()
    for kind in (k for v in a.variant.split(",") for k in GROUPS.get(v, [v])):
        patch(kind)
    patch_attention(a.attn, bool(a.attn_pdl), a.attn_from, a.dot)
    for spec in a.skinny:
        patch_skinny(spec)
    if a.gemv:
        patch_gemv(a.gemv)

    engine = random_engine(num_kv_blocks=a.kv_blocks, block_size=a.block_size)
    res = [f"{step_ms(engine, int(b)):.3f}" for b in a.batches.split(",")]
    print(f"ABLATE {a.variant:10s} attn={a.attn or '-'} from={a.attn_from} dot={a.dot} pdl={a.attn_pdl} "
          f"kv={a.kv_blocks} bs={a.block_size} skinny={'+'.join(a.skinny) or '-'} gemv={a.gemv or '-'} "
          + " ".join(res), flush=True)
    if not a.gemv and "1" in a.batches.split(","):
        from inference.kernels.gemv import _gemv_kernel  # noqa: PLC0415

        for key, cfg in _gemv_kernel.cache.items():
            print(f"GEMV {key[:3]}: {cfg}", flush=True)
    if a.profile:
        profile_step(engine, int(a.batches.split(",")[-1]))
    if a.boundary:
        for b in a.batches.split(","):
            boundary(engine, int(b))
    if a.ncu:
        ncu_step(engine, int(a.batches.split(",")[-1]))
    engine.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
