"""Decode attention A/B: another version of `inference/kernels/paged_attention.py` against the tree's, alone
and in the engine's decode graph, alternating in one process, with the GPU's power sampled beside.

    git show REV:inference/kernels/paged_attention.py > /tmp/pa_old.py   # on a machine with the history
    python bench/attn_ab.py /tmp/pa_old.py [--seconds 1.5] [--batches 1,4,16,64] [--engine-batches 1,16,64]

Attention alone: 32 layers' caches at context 576 (8 at batch 64) in one CUDA graph, each version held
--seconds, old / new / old / new. Engine: two engines side by side (2800 KV blocks each), the old file's
kernel captured in the first one's graphs; each decode graph replayed at context ~572. One table last.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch
from kernel_probe import DIM, capture  # bench/ is on the path of a script run from it
from power_probe import ATTN_CTX, attention_inputs, hold, report, smi, windows
from profile_engine import random_engine

import inference.kernels.paged_attention as pa


def load(path: str):
    spec = importlib.util.spec_from_file_location("paged_attention_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.paged_decode_attention


def alone(fns: dict, batches: list[int], seconds: float) -> list:
    runs, ctx = [], ATTN_CTX
    for b in batches:
        caches, table, lens, q, kv = attention_inputs(b, ctx)
        outs = [fn(q, *caches[0], table, lens, ctx, DIM**-0.5) for fn in fns.values()]
        print(f"batch {b}: outputs differ by {(outs[0] - outs[1]).abs().max().item():.2e}", flush=True)
        graphs = {}
        for name, fn in fns.items():
            def attn(fn=fn, caches=caches, q=q, table=table, lens=lens):
                for kc, vc in caches:
                    fn(q, kc, vc, table, lens, ctx, DIM**-0.5)
            graphs[name] = capture(attn)
        runs += [(f"attention alone {n}, batch {b}", windows(graphs[n].replay, seconds, kv / 1e9)) for n in [*fns] * 2]
        del caches, graphs
        torch.cuda.empty_cache()
    return runs


def engine(fn):
    keep, pa.paged_decode_attention = pa.paged_decode_attention, fn  # the runner takes it at set-up
    try:
        return random_engine(num_kv_blocks=2800)
    finally:
        pa.paged_decode_attention = keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("old")
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--engine-batches", default="1,16,64")
    a = ap.parse_args()
    fns = {"old": load(a.old), "new": pa.paged_decode_attention}
    log = Path(tempfile.mkdtemp()) / "smi.csv"
    proc = smi(log)
    time.sleep(0.5)
    runs = alone(fns, [int(b) for b in a.batches.split(",") if b], a.seconds)
    engines = {n: engine(fn) for n, fn in fns.items()}
    for b in (int(b) for b in a.engine_batches.split(",") if b):
        runs += [(f"engine decode step {n}, batch {b}", hold(engines[n], b, a.seconds)) for n in [*engines] * 2]
    proc.terminate()
    proc.wait()
    report(runs, log)
    os._exit(0)


if __name__ == "__main__":
    main()
