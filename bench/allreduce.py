"""All-reduce latency inside a CUDA graph, as tensor-parallel decode uses it (rows x hidden, bf16).

    torchrun --nproc_per_node=2 bench/allreduce.py [--hidden 5120] [--rows 1,16,512] [--reps 80]

Captures `reps` all-reduces in one graph per method and row count, replays it, and prints microseconds per
all-reduce on rank 0: NCCL (`dist.all_reduce`) against symmetric memory's one-shot all-reduce (each rank
reads every peer's buffer over NVLink; a copy into the symmetric buffer first), and checks each sum.
NVLink multicast stays off (set NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 outside).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


def timed(fn, reps: int, iters: int = 20) -> float:
    g = torch.cuda.CUDAGraph()
    fn()  # warm up outside the graph
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters / reps


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--hidden", type=int, default=5120)
    p.add_argument("--rows", default="1,16,512")
    p.add_argument("--reps", type=int, default=80)
    a = p.parse_args()
    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    group = dist.group.WORLD.group_name
    from torch.distributed import _symmetric_memory as symm_mem  # noqa: PLC0415

    rows_list = [int(r) for r in a.rows.split(",")]
    buf = symm_mem.empty(max(rows_list) * a.hidden, dtype=torch.bfloat16, device="cuda")
    symm_mem.rendezvous(buf, group)
    results = []
    for rows in rows_list:
        x = torch.full((rows, a.hidden), float(rank + 1), dtype=torch.bfloat16, device="cuda")
        want = float(sum(range(1, dist.get_world_size() + 1)))
        sb = buf[: rows * a.hidden].view(rows, a.hidden)
        out = torch.empty_like(x)

        def nccl(x=x, out=out):
            y = x.clone()
            dist.all_reduce(y)
            out.copy_(y)

        def one_shot(x=x, sb=sb, out=out):
            sb.copy_(x)
            torch.ops.symm_mem.one_shot_all_reduce_out(sb, "sum", group, out)

        row = [rows]
        for fn in (nccl, one_shot):
            try:
                us = timed(fn, a.reps)
                ok = bool((out == want).all().item())
                row.append(f"{us:.1f}" + ("" if ok else " WRONG"))
            except Exception as e:  # noqa: BLE001 (report and go on: one method may be missing)
                row.append(f"failed: {type(e).__name__}: {str(e)[:80]}")
            out.zero_()
        results.append(row)
    if rank == 0:
        print(f"\nall-reduce of rows x {a.hidden} bf16, {dist.get_world_size()} ranks, {a.reps} per CUDA graph, "
              "microseconds each (including one copy):")
        print("| rows | NCCL | symm_mem one-shot |\n|---|---|---|")
        for r in results:
            print("| " + " | ".join(str(c) for c in r) + " |")
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
