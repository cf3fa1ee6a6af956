"""`qwen-chat bench`: the reference's performance table (first-token and per-token latency, throughput by
batch size and input/output lengths), with the bandwidth floor and an optional transformers baseline."""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from inference.config import SamplingParams
from inference.entrypoints.bench_shapes import SHAPES, decode_bytes, weight_read_bytes
from inference.entrypoints.cli_args import add_engine_args, engine_config_from_args
from inference.entrypoints.generate import progress_printer
from inference.errors import CliParser, UserError

COLUMNS = ["Model", "Batchsize", "In_seq", "Out_seq", "Total time(s)", "First token time(ms)",
           "Non-first token time(ms)", "Non-first token Throughput(Tokens/s)", "E2E Throughput(Tokens/s)",
           "Floor(Tokens/s)", "% of floor"]


GPU_DEFAULTS = ("1,16,64", "[[256,256],[512,512],[1024,1024],[2048,2048]]")
CPU_DEFAULTS = ("1,4", "[[32,32],[128,64]]")  # minutes, not hours, on a CPU


def parse_args(argv):
    p = CliParser(allow_abbrev=False, prog="qwen-chat bench", description=__doc__)
    p.add_argument("--random-weights", choices=sorted(SHAPES), help="random weights of a published shape")
    p.add_argument("--batch-sizes", default=None,
                   help=f"default {GPU_DEFAULTS[0]} on a GPU/NPU, {CPU_DEFAULTS[0]} on the CPU")
    p.add_argument("--case-pairs", default=None, help=f"[[in, out], ...]; default {GPU_DEFAULTS[1]} on a GPU/NPU, "
                                                      f"{CPU_DEFAULTS[1]} on the CPU")
    p.add_argument("--cases", default=None, help="explicit batch:in:out list, e.g. 1:512:128,64:512:64")
    p.add_argument("--ttft-lens", default="", help="prompt lengths for a batch-1 first-token test, e.g. 4096")
    p.add_argument("--baseline", choices=["hf"], default=None)
    p.add_argument("--baseline-batch-sizes", default=None, help="subset of --batch-sizes for the baseline")
    p.add_argument("--out", default=None, help="CSV file")
    add_engine_args(p)
    a = p.parse_args(argv)
    plan_cases(a, GPU_DEFAULTS)  # refuses a bad list before the engine loads
    return a


def _positive(values: list[int], flag: str) -> list[int]:
    if not values or any(v < 1 for v in values):
        raise UserError(f"{flag}: every number must be a positive integer, got {values}")
    return values


def plan_cases(a, defaults: tuple[str, str]) -> None:
    """a.cases [(batch, in, out)], a.ttft_lens, a.baseline_batch_sizes from the flags, else from `defaults`."""
    batch_sizes = a.batch_sizes if a.batch_sizes is not None else defaults[0]
    case_pairs = a.case_pairs if a.case_pairs is not None else defaults[1]
    try:
        sizes = _positive([int(x) for x in str(batch_sizes).split(",")], "--batch-sizes")
        pairs = [tuple(int(v) for v in c) for c in json.loads(case_pairs)]
        if any(len(c) != 2 for c in pairs):
            raise ValueError("each pair is [in, out]")
        _positive([v for c in pairs for v in c], "--case-pairs")
        ttft = _positive([int(x) for x in a.ttft_lens.split(",") if x], "--ttft-lens") if a.ttft_lens else []
        cases = ([tuple(int(v) for v in c.split(":")) for c in a.cases.split(",")] if a.cases else
                 [(b, i, o) for b in sizes for i, o in pairs])
        if any(len(c) != 3 for c in cases):
            raise ValueError("each case is batch:in:out")
        _positive([v for c in cases for v in c], "--cases")
        base = [int(x) for x in a.baseline_batch_sizes.split(",")] if a.baseline_batch_sizes else sizes
    except (ValueError, TypeError) as e:
        raise UserError(f"bad --batch-sizes/--case-pairs/--cases/--ttft-lens: {e}") from e
    a.plan = SimpleNamespace(cases=cases, ttft_lens=ttft, baseline_batch_sizes=base)


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    if device.type != "cuda":
        return float("nan")
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 20 / (time.perf_counter() - t)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(engine, batch: int, n_in: int, n_out: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 150000, (batch, n_in), generator=g).tolist()
    params = SamplingParams(max_new_tokens=n_out, temperature=0.0, ignore_eos=True)
    sync(engine.device)
    t0 = time.perf_counter()
    rids = [engine.add_request(p, params) for p in prompts]
    got = dict.fromkeys(rids, 0)
    first = None
    while engine.has_unfinished():
        for o in engine.step():
            got[o.request_id] += len(o.new_token_ids)
        if first is None and all(v > 0 for v in got.values()):
            first = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    return {"e2e": e2e, "first": first if first is not None else e2e, "tokens": sum(got.values())}


def row(model, batch, n_in, n_out, r, floor_tok_s):
    """One table row; None where a value does not apply (one output token, no bandwidth floor)."""
    non_first = (r["e2e"] - r["first"]) / (n_out - 1) if n_out > 1 else None
    nf_tput = batch / non_first if non_first else None
    floor = floor_tok_s if floor_tok_s and math.isfinite(floor_tok_s) else None
    return {"Model": model, "Batchsize": batch, "In_seq": n_in, "Out_seq": n_out,
            "Total time(s)": round(r["e2e"], 4), "First token time(ms)": round(r["first"] * 1000, 2),
            "Non-first token time(ms)": None if non_first is None else round(non_first * 1000, 3),
            "Non-first token Throughput(Tokens/s)": None if nf_tput is None else round(nf_tput, 1),
            "E2E Throughput(Tokens/s)": round(batch * n_out / r["e2e"], 1),
            "Floor(Tokens/s)": None if floor is None else round(floor, 1),
            "% of floor": round(100 * nf_tput / floor, 1) if floor and nf_tput else None}


def progress_line(i: int, n: int, r: dict) -> str:
    """What stderr shows as each case ends."""
    tput = r["Non-first token Throughput(Tokens/s)"]
    return (f"[{i}/{n}] batch {r['Batchsize']}, {r['In_seq']} in / {r['Out_seq']} out: {r['Total time(s)']:.2f} s, "
            f"first token {r['First token time(ms)']:.1f} ms" + (f", {tput} tok/s" if tput is not None else ""))


def make_engine(a):
    from inference.engine.llm_engine import start_engine
    from inference.models.demo import write_checkpoint

    if a.random_weights:
        tmp = Path(tempfile.mkdtemp(prefix="qwen-bench-")) / f"random-{a.random_weights}"
        write_checkpoint(tmp, with_weights=False, **SHAPES[a.random_weights])
        a.model = str(tmp)
    cfg = engine_config_from_args(a)
    cfg.enable_prefix_caching = False  # every case is new work, also across repeats
    if a.random_weights:
        cfg.extra["random_weights"] = True
    return start_engine(cfg, progress=progress_printer)  # ranks > 0 end inside, after rank 0's shutdown


def print_table(rows) -> None:
    """One table on stdout: "-" where a value does not apply."""
    cell = lambda v: "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)
    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in COLUMNS}
    print(" | ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip())
    print("-+-".join("-" * widths[c] for c in COLUMNS))
    for r in rows:
        print(" | ".join(cell(r[c]).ljust(widths[c]) for c in COLUMNS).rstrip())


def memory_line(engine, weights: int, bw: float) -> str:
    """Load time and memory under the table: the weights as loaded (int8 layers in one byte), the peak while
    loading (no float copy of int8 layers: about the weights), the KV cache, the peak of the whole run."""
    r, gib = engine.runner, 1 << 30
    kv = r.k_cache.numel() * r.k_cache.element_size() * 2
    text = (f"load {r.load_seconds:.1f} s; weights {weights / gib:.2f} GiB read a step; "
            f"KV cache {kv / gib:.1f} GiB ({r.num_blocks * r.block_size} tokens)")
    if engine.device.type == "cuda":
        text += (f"; GPU memory peak {r.load_peak_bytes / gib:.1f} GiB loading, "
                 f"{torch.cuda.max_memory_allocated(engine.device) / gib:.1f} GiB in all; "
                 f"bandwidth {bw / 1e12:.2f} TB/s")
    return text


def main(argv) -> int:
    a = parse_args(argv)
    engine = make_engine(a)
    dev, m = engine.device, engine.model_config
    el = torch.empty(0, dtype=engine.dtype).element_size()
    weights = weight_read_bytes(engine.runner.model)  # as loaded: int8 layers in one byte, lm_head in float
    bw = copy_bandwidth(dev)
    name = a.random_weights or Path(a.model).name
    label = f"{name} {str(engine.dtype).removeprefix('torch.')} tp{a.tp}{' ' + a.quant if a.quant else ''}"
    if dev.type == "cpu":
        plan_cases(a, CPU_DEFAULTS)  # flags the user gave stay; only the defaults change
    plan = a.plan
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    bw_text = f"copy bandwidth {bw / 1e12:.2f} TB/s" if math.isfinite(bw) else "no bandwidth floor off CUDA"
    total = len(plan.cases) + len(plan.ttft_lens)
    print(f"bench: {total} case(s) on {name_dev} ({label}); {bw_text}; warming up", file=sys.stderr, flush=True)
    rows = []
    run_case(engine, 1, 32, 8, seed=99)  # warm-up
    for batch, n_in, n_out in plan.cases:
        run_case(engine, batch, n_in, min(n_out, 4), seed=batch * 7 + n_in + 1)  # warm-up of this shape
        r = run_case(engine, batch, n_in, n_out, seed=batch * 7 + n_in)
        floor = batch * bw / decode_bytes(m, batch, n_in + n_out / 2, el, tp=a.tp, weights=weights)
        rows.append(row(label, batch, n_in, n_out, r, floor))
        print(progress_line(len(rows), total, rows[-1]), file=sys.stderr, flush=True)
    for n_in in plan.ttft_lens:  # median of 3 after a warm-up of the shape
        run_case(engine, 1, n_in, 1, seed=n_in + 1)
        runs = sorted((run_case(engine, 1, n_in, 1, seed=n_in + i) for i in range(3)), key=lambda r: r["first"])
        rows.append(row(label + " ttft", 1, n_in, 1, runs[1], float("nan")))
        print(progress_line(len(rows), total, rows[-1]), file=sys.stderr, flush=True)
    if a.baseline == "hf":
        from inference.entrypoints.bench_hf import hf_rows

        rows += hf_rows(engine, a, bw, el, label)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    print_table(rows)
    print(memory_line(engine, weights, bw), flush=True)
    engine.shutdown()
    return 0
