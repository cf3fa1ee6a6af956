"""What one decode matmul costs beyond its bytes: the skinny GEMM at 16 tokens over weights of 64 to 12288
rows x 4096, 32 launches on 32 different weights in one CUDA graph (so L2 serves no repeat), time per
launch against bytes; the least-squares line's intercept is the fixed cost of a launch, its slope the
streaming rate. Run it twice, with QWEN_CHAT_PDL=0 and without, to see what programmatic dependent launch
takes off.

    python bench/launch_cost.py [--rows 64,256,1024,4096,12288] [--batch 16]
"""

from __future__ import annotations

import argparse

import torch

from bench.kernel_probe import copy_bw, graph_ms
from inference.kernels import pdl
from inference.kernels.skinny import skinny_linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--rows", default="64,256,1024,4096,12288")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=4096)
    a = p.parse_args()
    bw = copy_bw()
    x = torch.randn(a.batch, a.k, device="cuda", dtype=torch.float16)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s; batch {a.batch}, K {a.k}, PDL {pdl(x)}")
    print("| rows | MB a launch | us a launch | GB/s |")
    print("|---|---|---|---|")
    points = []
    for n in (int(r) for r in a.rows.split(",")):
        ws = [torch.randn(n, a.k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(32)]

        def fn(ws=ws):
            for w in ws:
                skinny_linear(x, w)
        us = graph_ms(fn) * 1000 / len(ws)
        mb = n * a.k * 2 / 1e6
        points.append((mb, us))
        print(f"| {n} | {mb:.2f} | {us:.2f} | {mb / us * 1e3:.0f} |")
        del ws
    xs, ys = torch.tensor([p[0] for p in points]), torch.tensor([p[1] for p in points])
    slope = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
    fixed = ys.mean() - slope * xs.mean()
    print(f"fixed cost a launch {fixed:.2f} us; streaming {1e3 / slope:.0f} GB/s ({1e5 / slope / bw:.0f} % of copy)")


if __name__ == "__main__":
    main()
