"""Where a step's time goes on CUDA: wall time per step and the top kernels, for a few scenarios.

python bench/profile_engine.py [--shape 7b] [--scenarios prefill512,decode1,prefill4096,decode64] [--trace DIR]
    (--trace: each scenario's profile as a Chrome trace with Python stacks, DIR/SCENARIO.json.gz)
torchrun --nproc_per_node=2 bench/profile_engine.py ...   (tensor parallel: rank 0's kernels, NCCL's included)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from inference.config import EngineConfig, SamplingParams
from inference.distributed import exit_process
from inference.engine.llm_engine import LLMEngine, start_engine
from inference.entrypoints.bench_shapes import SHAPES
from inference.models.demo import write_checkpoint


def prompts(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (n, length), generator=g).tolist()


def clear(engine) -> None:
    """Every request aborted, then one step, so the engine is empty."""
    for rid in list(engine.seqs):
        engine.abort(rid)
    engine.step()


def random_engine(shape: str = "7b", **overrides) -> LLMEngine:
    """The engine on random weights of a published shape (float16 on CUDA, up to 64 sequences of 8192
    tokens, no prefix cache); `overrides` go to EngineConfig. Each caller (each rank) writes its own config."""
    d = Path(tempfile.mkdtemp()) / "m"
    write_checkpoint(d, with_weights=False, **SHAPES[shape])
    cfg = dict(model=str(d), device="cuda", dtype="float16", max_num_seqs=64, max_num_batched_tokens=8192,
               max_model_len=8192, enable_prefix_caching=False, extra={"random_weights": True})
    return start_engine(EngineConfig(**{**cfg, **overrides}))  # ranks > 0 end inside, after rank 0 shuts down


def timed_steps(engine, steps):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        with record_function("engine.step"):
            engine.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps * 1000


def print_gaps(prof, top: int = 6) -> None:
    """Device idle time between consecutive kernels, and the largest gaps with their neighbours; for one
    step, the host time of `engine.step` before its first kernel starts and after its last one ends."""
    ks = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    if len(ks) < 2:
        return
    gaps = [(b.time_range.start - a.time_range.end, a.name, b.name) for a, b in zip(ks, ks[1:])]
    span = ks[-1].time_range.end - ks[0].time_range.start
    idle = sum(g for g, _, _ in gaps if g > 0)
    steps = [e for e in prof.events() if e.name == "engine.step" and e.device_type == DeviceType.CPU]
    edges = ""
    if len(steps) == 1:
        st = steps[0].time_range
        edges = (f"; engine.step: {(ks[0].time_range.start - st.start) / 1000:.2f} ms before the first kernel, "
                 f"{(st.end - ks[-1].time_range.end) / 1000:.2f} ms after the last")
    print(f"device: {len(ks)} kernels over {span / 1000:.2f} ms, idle between them {idle / 1000:.2f} ms{edges}")
    for g, a, b in sorted(gaps, reverse=True)[:top]:
        print(f"  gap {g:8.1f} us  after {a[:50]}  before {b[:50]}")


def scenario(engine, name, prof_rows, trace=None):
    kind, n = name.rstrip("0123456789"), int(name.lstrip("prefildco"))
    clear(engine)
    if kind == "prefill":
        for warm in (True, False):
            engine.add_request(prompts(1, n, 5 + warm)[0], SamplingParams(max_new_tokens=1, ignore_eos=True))
            if warm:
                engine.step()
                continue
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=bool(trace)) as p:
                ms = timed_steps(engine, 1)
    else:
        for pr in prompts(n, 512, 7):
            engine.add_request(pr, SamplingParams(max_new_tokens=400, ignore_eos=True))
        while any(s.in_prefill or s.num_computed == 0 for s in engine.seqs.values()):
            engine.step()
        timed_steps(engine, 5)
        ms = timed_steps(engine, 20)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=bool(trace)) as p:
            timed_steps(engine, 5)
    print(f"\n=== {name}: {ms:.2f} ms per step (wall) ===")
    print_gaps(p)
    if trace:
        Path(trace).mkdir(parents=True, exist_ok=True)
        p.export_chrome_trace(str(Path(trace) / f"{name}.json.gz"))
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=prof_rows, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--scenarios", default="prefill512,decode1,prefill4096,decode64")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--trace", default=None, help="a folder for each scenario's Chrome trace")
    a = ap.parse_args()
    engine = random_engine(a.shape, tp=int(os.environ.get("WORLD_SIZE", 1)))  # rank 0 only returns
    for s in a.scenarios.split(","):
        scenario(engine, s, a.rows, a.trace)
    engine.shutdown()
    exit_process(0)


if __name__ == "__main__":
    main()
