"""`qwen-chat bench`: the reference's performance table (first-token and per-token latency, throughput by
batch size and input/output lengths), with the bandwidth floor and an optional transformers baseline."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from inference.bench_shapes import SHAPES, decode_bytes
from inference.cli_args import add_engine_args, engine_config_from_args
from inference.config import SamplingParams
from inference.errors import UserError

COLUMNS = ["Model", "Batchsize", "In_seq", "Out_seq", "Total time(s)", "First token time(ms)",
           "Non-first token time(ms)", "Non-first token Throughput(Tokens/s)", "E2E Throughput(Tokens/s)",
           "Floor(Tokens/s)", "% of floor"]


def parse_args(argv):
    p = argparse.ArgumentParser(allow_abbrev=False, prog="qwen-chat bench", description=__doc__)
    p.add_argument("--random-weights", choices=sorted(SHAPES), help="random weights of a published shape")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--case-pairs", default="[[256,256],[512,512],[1024,1024],[2048,2048]]")
    p.add_argument("--cases", default=None, help="explicit batch:in:out list, e.g. 1:512:128,64:512:64")
    p.add_argument("--ttft-lens", default="", help="prompt lengths for a batch-1 first-token test, e.g. 4096")
    p.add_argument("--baseline", choices=["hf"], default=None)
    p.add_argument("--baseline-batch-sizes", default=None, help="subset of --batch-sizes for the baseline")
    p.add_argument("--out", default=None, help="CSV file")
    add_engine_args(p)
    a = p.parse_args(argv)
    try:
        a.batch_sizes = [int(x) for x in a.batch_sizes.split(",")]
        a.case_pairs = [tuple(map(int, c)) for c in json.loads(a.case_pairs)]
        a.ttft_lens = [int(x) for x in a.ttft_lens.split(",") if x]
    except (ValueError, TypeError) as e:
        raise UserError(f"bad --batch-sizes/--case-pairs/--ttft-lens: {e}") from e
    a.cases = ([tuple(int(v) for v in c.split(":")) for c in a.cases.split(",")] if a.cases else
               [(b, i, o) for b in a.batch_sizes for i, o in a.case_pairs])
    a.baseline_batch_sizes = ([int(x) for x in a.baseline_batch_sizes.split(",")] if a.baseline_batch_sizes
                              else a.batch_sizes)
    return a


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
    non_first = (r["e2e"] - r["first"]) / max(n_out - 1, 1)
    nf_tput = batch / non_first if non_first > 0 else float("nan")
    return {"Model": model, "Batchsize": batch, "In_seq": n_in, "Out_seq": n_out,
            "Total time(s)": round(r["e2e"], 4), "First token time(ms)": round(r["first"] * 1000, 2),
            "Non-first token time(ms)": round(non_first * 1000, 3),
            "Non-first token Throughput(Tokens/s)": round(nf_tput, 1),
            "E2E Throughput(Tokens/s)": round(batch * n_out / r["e2e"], 1),
            "Floor(Tokens/s)": round(floor_tok_s, 1),
            "% of floor": round(100 * nf_tput / floor_tok_s, 1) if floor_tok_s == floor_tok_s else ""}


def make_engine(a):
    from inference.demo import write_checkpoint  # noqa: PLC0415
    from inference.engine.llm_engine import LLMEngine  # noqa: PLC0415

    if a.random_weights:
        tmp = Path(tempfile.mkdtemp(prefix="qwen-bench-")) / f"random-{a.random_weights}"
        write_checkpoint(tmp, with_weights=False, **SHAPES[a.random_weights])
        a.model = str(tmp)
    cfg = engine_config_from_args(a)
    cfg.enable_prefix_caching = False  # every case is new work, also across repeats
    if a.random_weights:
        cfg.extra["random_weights"] = True
    return LLMEngine(cfg)


def print_table(rows) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    print(" | ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))


def main(argv) -> int:
    a = parse_args(argv)
    engine = make_engine(a)
    if engine.rank != 0:
        return 0
    dev, m = engine.device, engine.model_config
    el = torch.empty(0, dtype=engine.dtype).element_size()
    wel = 1.0 if (a.quant or m.quantize) else el  # int8 weights
    bw = copy_bandwidth(dev)
    name = a.random_weights or Path(a.model).name
    label = f"{name} {str(engine.dtype).removeprefix('torch.')} tp{a.tp}{' ' + a.quant if a.quant else ''}"
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev}; copy bandwidth "
          f"{bw / 1e12:.2f} TB/s", file=sys.stderr)
    rows = []
    run_case(engine, 1, 32, 8, seed=99)  # warm-up
    for batch, n_in, n_out in a.cases:
        run_case(engine, batch, n_in, min(n_out, 4), seed=batch * 7 + n_in + 1)  # warm-up of this shape
        r = run_case(engine, batch, n_in, n_out, seed=batch * 7 + n_in)
        floor = batch * bw / decode_bytes(m, batch, n_in + n_out / 2, el, wel, a.tp)
        rows.append(row(label, batch, n_in, n_out, r, floor))
        print(rows[-1], file=sys.stderr, flush=True)
    for n_in in a.ttft_lens:  # median of 3 after a warm-up of the shape
        run_case(engine, 1, n_in, 1, seed=n_in + 1)
        runs = sorted((run_case(engine, 1, n_in, 1, seed=n_in + i) for i in range(3)), key=lambda r: r["first"])
        rows.append(row(label + " ttft", 1, n_in, 1, runs[1], float("nan")))
    if a.baseline == "hf":
        from inference.bench_hf import hf_rows  # noqa: PLC0415

        rows += hf_rows(engine, a, bw, el, label)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    print_table(rows)
    engine.shutdown()
    return 0
