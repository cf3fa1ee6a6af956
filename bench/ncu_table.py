"""Nsight Compute's per-kernel figures for one decode step, grouped by kernel and grid: how long each kernel
takes alone (ncu runs them one at a time), the bytes it reads from device memory and at what rate.

ncu --profile-from-start off --clock-control none --print-units base --csv --log-file step.csv \\
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \\
    python bench/ablate.py --batches 16 --ncu
python bench/ncu_table.py step.csv [--step-ms 5.17] [--copy-gbs 4260]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict


def read(path: str) -> dict[str, dict[str, str]]:
    """{kernel id: {"name": ..., metric: value}} from ncu's CSV (one row per kernel and metric)."""
    kernels: dict[str, dict[str, str]] = defaultdict(dict)
    with open(path) as f:
        rows = csv.reader(line for line in f if line.startswith('"'))
        header = next(rows)
        col = {h: i for i, h in enumerate(header)}
        for r in rows:
            k = kernels[r[col["ID"]]]
            k["name"] = r[col["Kernel Name"]]
            k[r[col["Metric Name"]]] = r[col["Metric Value"]].replace(",", "")
    return kernels


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("csv")
    ap.add_argument("--step-ms", type=float, default=0.0, help="the step's time in the graph, for the gap")
    ap.add_argument("--copy-gbs", type=float, default=4260.0, help="copy bandwidth measured, GB/s")
    a = ap.parse_args()
    groups: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for k in read(a.csv).values():
        name = k["name"].split("(")[0][:40]
        g = groups[(name, k.get("launch__grid_size", "?"))]
        g[0] += 1
        g[1] += float(k.get("gpu__time_duration.sum", 0)) / 1e3  # ns -> us
        g[2] += float(k.get("dram__bytes_read.sum", 0)) / 1e6  # B -> MB
        g[3] += float(k.get("dram__bytes_write.sum", 0)) / 1e6
    total_us = sum(g[1] for g in groups.values())
    total_mb = sum(g[2] + g[3] for g in groups.values())
    print(f"{'kernel':40s} {'grid':>7s} {'n':>4s} {'us each':>8s} {'us all':>8s} {'MB read':>9s} {'GB/s':>6s} "
          f"{'us at copy bw':>13s}")
    for (name, grid), (n, us, rd, wr) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        at_copy = (rd + wr) / a.copy_gbs  # MB / (GB/s) = ms; shown in us per kernel
        print(f"{name:40s} {grid:>7s} {n:4d} {us / n:8.2f} {us:8.1f} {rd:9.1f} {(rd + wr) / us * 1e3:6.0f} "
              f"{at_copy * 1e3 / n:13.2f}")
    print(f"NCU kernels {sum(g[0] for g in groups.values())}, alone {total_us / 1e3:.3f} ms, "
          f"{total_mb / 1e3:.2f} GB moved ({total_mb / a.copy_gbs:.3f} ms at copy bandwidth)"
          + (f"; step in the graph {a.step_ms:.3f} ms" if a.step_ms else ""))


if __name__ == "__main__":
    main()
