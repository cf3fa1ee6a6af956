"""Where a decode matmul's fixed cost goes: per-program timestamps in the 7B linear stack (CUDA, Hopper).

    python bench/timeline_probe.py [--layers 32] [--batches 16,64]

The linear stack of a decode step (each layer's c_attn + bias, attn.c_proj, gate/up with SiLU, mlp.c_proj,
the split-K reduce kernels; then lm_head) through `skinny_linear`, captured in one CUDA graph with the
kernels' timestamps on (`inference/kernels/stamps.py`: each program's global timer on entry, after the
wait for the kernel before, after its last store, and its multiprocessor), with programmatic launch on
and off. One replay's stamps, kernel by kernel, averaged over the layers:
- busy: from the first program past the wait to the last program's end;
- gap: from the previous kernel's last end to this kernel's first program past the wait (the boundary);
- skew: how much later than the first the median program got past the wait (the start of a wave);
- tail: the last program's end after the median program's end (the drain, when most multiprocessors idle);
- entry to go: how long the median program sat resident before the wait let it go (programmatic launch).
The graph's replay time is printed beside the stamps' span, so the stamps' own cost shows, and so is the
time every byte of the stack would take at lm_head's rate (one long launch): the bound on fewer launches.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics

import torch
from kernel_probe import FFN, VOCAB, H, copy_bw, graph_ms, replay_ms, stack_weights  # bench/ on the path

from inference.kernels import device_feature
from inference.kernels.skinny import skinny_linear
from inference.kernels.stamps import Recorder, recording

NAMES = {(3 * H, H): "c_attn", (H, H): "attn.c_proj", (FFN, H): "gate/up", (H, FFN): "mlp.c_proj",
         (VOCAB, H): "lm_head"}


def stack_fn(L, head, m):
    x = torch.randn(m, H, device="cuda", dtype=torch.float16)

    def fn():
        h = x
        for d in L:  # attn.c_proj reads the layer's input: a slice of c_attn's output would need a copy kernel
            skinny_linear(h, d["qkv"], d["qkv_b"])
            h = skinny_linear(h, d["o"])
            h = skinny_linear(skinny_linear(h, d["gu"], gated=True), d["d"])
        return skinny_linear(h, head)
    return fn


def record(fn):
    """(graph ms without stamps, graph ms with stamps, the Recorder after one replay)."""
    plain = graph_ms(fn)
    with recording(Recorder()):  # compile the stamped kernels outside the capture
        fn()
    torch.cuda.synchronize()
    rec, g = Recorder(), torch.cuda.CUDAGraph()
    with recording(rec), torch.cuda.graph(g):
        fn()
    stamped = replay_ms(g)
    g.replay()
    torch.cuda.synchronize()
    return plain, stamped, rec


def analyse(rec):
    rows = rec.rows[:rec.used].cpu().tolist()
    kernels, prev_end = [], None
    for kernel, _m, n, k, first, programs in rec.launches:
        r = rows[first:first + programs]
        t_in, t_go, t_end = ([p[i] for p in r] for i in range(3))
        start, end = min(t_go), max(t_end)
        per_sm = collections.Counter(p[3] for p in r)
        took = [(p[2] - p[1], per_sm[p[3]] > 1) for p in r]  # a program's time past the wait; SM shared?
        alone, shared = ([t for t, sh in took if sh == flag] for flag in (False, True))
        name = NAMES.get((n, k), "?") if kernel == "skinny" else kernel
        nbytes = (2 if name == "gate/up" else 1) * n * k * 2 if kernel == "skinny" else 0
        kernels.append(dict(name=name, programs=programs, sms=len({p[3] for p in r}), busy=end - start,
                            gap=start - prev_end if prev_end is not None else 0,
                            skew=statistics.median(t_go) - start, tail=end - statistics.median(t_end),
                            early=statistics.median(t_go) - statistics.median(t_in), nbytes=nbytes,
                            alone=alone, shared=shared))
        prev_end = end
    stamps = sorted({v for p in rows for v in p[:3]})
    resolution = min((b - a for a, b in zip(stamps, stamps[1:])), default=0)
    span = max(p[2] for p in rows) - min(p[1] for p in rows)
    return kernels, resolution, span


def by_class(kernels):
    """Each kernel class's launches averaged: (name, launches, programs, SMs, averages in us, GB/s while busy)."""
    rows = []
    for name in dict.fromkeys(k["name"] for k in kernels):
        ks = [k for k in kernels if k["name"] == name]
        avg = {f: statistics.mean(k[f] for k in ks) / 1e3 for f in ("busy", "gap", "skew", "tail", "early")}
        for f in ("alone", "shared"):
            took = [t for k in ks for t in k[f]]
            n = len(took) // len(ks)
            avg[f] = f"{statistics.mean(took) / 1e3:.2f}, {max(took) / 1e3:.2f} ({n})" if took else ""
        gbs = sum(k["nbytes"] for k in ks) / sum(k["busy"] for k in ks) if ks[0]["nbytes"] else 0
        rows.append((name, len(ks), ks[0]["programs"], ks[0]["sms"], avg, gbs))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="16,64")
    a = p.parse_args()
    bw = copy_bw()
    L, head, nbytes = stack_weights(a.layers)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s; {a.layers} layers + lm_head, "
          f"{nbytes / 1e9:.2f} GB")
    table, heads = [], []
    for m in (int(b) for b in a.batches.split(",")):
        for on in ("1", "0"):
            os.environ["QWEN_CHAT_PDL"] = on
            device_feature.cache_clear()
            plain, stamped, rec = record(stack_fn(L, head, m))
            kernels, resolution, span = analyse(rec)
            lm = kernels[-1]  # lm_head: 1.24 GB in one launch, the rate of a long stream
            heads.append(f"batch {m}, PDL {on}: graph {plain:.3f} ms, stamped {stamped:.3f} ms, stamps' span "
                  f"{span / 1e6:.3f} ms, busy {sum(k['busy'] for k in kernels) / 1e6:.3f} ms, gaps "
                  f"{sum(k['gap'] for k in kernels) / 1e6:.3f} ms, {len(kernels)} kernels, timer step {resolution} ns; "
                  f"every byte at lm_head's rate: {nbytes * lm['busy'] / lm['nbytes'] / 1e6:.3f} ms")
            table += [(m, on, *row) for row in by_class(kernels)]
    print("\n| batch | PDL | kernel | launches | programs | SMs | busy us | gap before us | skew us | tail us | "
          "entry to go us | GB/s while busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, on, name, n, progs, sms, avg, gbs in table:
        print(f"| {m} | {'on' if on == '1' else 'off'} | {name} | {n} | {progs} | {sms} | {avg['busy']:.2f} | "
              f"{avg['gap']:.2f} | {avg['skew']:.2f} | {avg['tail']:.2f} | {avg['early']:.2f} | "
              f"{f'{gbs:.0f}' if gbs else ''} |")
    print("\n| batch | PDL | kernel | a program alone on its SM: mean, slowest us (programs) | "
          "two or more on an SM: mean, slowest us (programs) |")
    print("|---|---|---|---|---|")
    for m, on, name, _, _, _, avg, _ in table:
        if name != "lm_head":  # a single wave: programs sharing an SM ran side by side
            print(f"| {m} | {'on' if on == '1' else 'off'} | {name} | {avg['alone']} | {avg['shared']} |")
    print("\n" + "\n".join(heads))


if __name__ == "__main__":
    main()
