"""Work held for seconds, with the GPU's power draw and SM clock beside it: is the power cap the limit?

    python bench/power_probe.py [--batches 1,16,64] [--seconds 3] [--parts] [--attn-configs]

Samples `nvidia-smi` (instant power, SM clock, clock-event reasons) every 20 ms while, in turn, a 2 GiB
device-to-device copy, then (--parts) the 7B linear stack alone and decode attention alone (32 layers'
caches at context 576; --attn-configs: each tile candidate), then the engine's decode graph at each batch
(512-token prompts + 60 steps, then the same graph replayed: context stays ~572), each replayed back to
back for --seconds. Prints one row per phase: the rate over quarter-second windows (GB/s read, or ms a
decode step), the median SM clock and power, and the share of samples in which the software power cap
(clock-event reason 0x4) held the clock down.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import kernel_probe  # bench/ is on the path of a script run from it
import torch
from kernel_probe import DIM, capture
from profile_engine import clear, decode_graph, random_engine, steady

ATTN_CTX = 576  # decode attention held alone: the middle of the 512 / 128 case
FIELDS = "timestamp,power.draw.instant,clocks.sm,clocks_event_reasons.active"


def smi(path: Path) -> subprocess.Popen:
    return subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-lms", "20"],
                            stdout=path.open("w"), stderr=subprocess.DEVNULL)


def samples(path: Path) -> list[tuple[float, float, float, int]]:
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            day, frac = parts[0].split(".")
            ts = time.mktime(time.strptime(day, "%Y/%m/%d %H:%M:%S")) + float("0." + frac)
            out.append((ts, float(parts[1]), float(parts[2]), int(parts[3], 16)))
        except (ValueError, IndexError):
            continue
    return out


def windows(run, seconds: float, unit: float) -> list[tuple[float, float, float]]:
    """(wall time at the window's end, ms a call, calls) per quarter second of `run` called back to back."""
    out, end = [], time.time() + seconds
    while time.time() < end:
        torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 0.25:
            run()
            n += 1
            if n % 8 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        out.append((time.time(), (time.perf_counter() - t) / n * 1000 / unit, n))
    return out


def hold(engine, batch: int, seconds: float):
    """The decode graph of `batch` replayed back to back at context ~572 (the same inputs each time)."""
    steady(engine, batch, 200)
    out = windows(decode_graph(engine, batch).replay, seconds, 1)
    clear(engine)
    return out


def attention_inputs(b: int, ctx: int):
    """`kernel_probe.attention_inputs` with 32 layers' caches (8 above batch 16)."""
    return kernel_probe.attention_inputs(b, ctx, 32 if b <= 16 else 8)


def parts_hold(seconds: float, batches: list[int], attn_configs: bool):
    """The linear stack alone (batch 1: GEMVs; more: skinny GEMMs) and decode attention alone (32 layers'
    caches at context 576), each one CUDA graph replayed back to back: ms per GB read."""
    from kernel_probe import stack_weights  # noqa: PLC0415

    from inference.kernels import thin_matmul  # noqa: PLC0415
    from inference.kernels.paged_attention import CONFIGS, paged_decode_attention  # noqa: PLC0415

    runs = []
    layers, head, nbytes = stack_weights(32)
    for b in batches:
        x = torch.randn(b, 4096, device="cuda", dtype=torch.float16)

        def stack(x=x, layers=layers, head=head):
            h = x
            for d in layers:
                q = thin_matmul(h, d["qkv"], d["qkv_b"])
                h = thin_matmul(q[:, :4096].contiguous(), d["o"])
                h = thin_matmul(thin_matmul(h, d["gu"], gated=True), d["d"])
            return thin_matmul(h, head)
        runs.append((f"linear stack, batch {b}", windows(capture(stack).replay, seconds, nbytes / 1e9)))
    del layers, head
    torch.cuda.empty_cache()
    ctx = ATTN_CTX
    for b in (x for x in batches if x > 1):
        caches, table, lens, q, kv = attention_inputs(b, ctx)

        def attn(q=q, caches=caches, table=table, lens=lens, splits=None, cfg=None, dot=None):
            for kc, vc in caches:
                paged_decode_attention(q, kc, vc, table, lens, ctx, DIM**-0.5, splits, cfg, dot)
        runs.append((f"attention, batch {b}", windows(capture(attn).replay, seconds, kv / 1e9)))
        for splits, cfg, dot in ([(1, c, True) for c in CONFIGS] + [(2, (64, 4, 2), True), (1, (128, 4, 2), False)]
                                 if attn_configs else []):
            fn = functools.partial(attn, splits=splits, cfg=cfg, dot=dot)
            runs.append((f"attention, batch {b}, splits {splits} {cfg} dot {dot}",
                         windows(capture(fn).replay, seconds / 2, kv / 1e9)))
        del caches
        torch.cuda.empty_cache()
    return runs


def copy_hold(seconds: float):
    """A 2 GiB device-to-device copy back to back: ms per GB moved (read + write)."""
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return windows(lambda: b.copy_(a), seconds, 2 * a.numel() / 1e9)


def report(runs, log: Path) -> None:
    """One row per phase: its rate (ms a step for phases named "engine ...", else GB/s) beside the samples
    taken while it ran."""
    got = samples(log)
    print("| phase | rate: median (min-max) | SM MHz: median (min) | W: median | power-capped samples |")
    print("|---|---|---|---|---|")
    for phase, wins in runs:
        lo = wins[0][0] - 0.25
        step = phase.startswith("engine")
        rates = [ms if step else 1000 / ms for _, ms, _ in wins]
        got_w = [x for x in got if lo <= x[0] < wins[-1][0]]
        if not got_w:
            continue
        capped = sum(1 for x in got_w if x[3] & 0x4)
        unit = " ms" if step else " GB/s"
        print(f"| {phase} | {statistics.median(rates):.{3 if step else 0}f}{unit} ({min(rates):.{3 if step else 0}f}-"
              f"{max(rates):.{3 if step else 0}f}) | {statistics.median(x[2] for x in got_w):.0f} "
              f"({min(x[2] for x in got_w):.0f}) | {statistics.median(x[1] for x in got_w):.0f} | "
              f"{100 * capped / len(got_w):.0f} % |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--parts", action="store_true", help="also the linear stack and attention alone")
    ap.add_argument("--attn-configs", action="store_true", help="with --parts: each attention tile candidate")
    a = ap.parse_args()
    log = Path(tempfile.mkdtemp()) / "smi.csv"
    proc = smi(log)
    time.sleep(0.5)
    runs = [("copy", copy_hold(a.seconds))]
    torch.cuda.empty_cache()
    if a.parts:
        runs += parts_hold(a.seconds, [int(b) for b in a.batches.split(",")], a.attn_configs)
        torch.cuda.empty_cache()
    engine = random_engine()
    runs += [(f"engine decode step, batch {b}", hold(engine, int(b), a.seconds)) for b in a.batches.split(",")]
    proc.terminate()
    proc.wait()
    report(runs, log)
    engine.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
