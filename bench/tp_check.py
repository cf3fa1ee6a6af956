"""Tensor parallelism on several GPUs (issue 10): the same answers at every tp, and decode speed by tp.

    python bench/tp_check.py [--shape 7b] [--tps 1,2] [--layers N] [--bench "14b:1,2"]

1. Correctness: writes a random-weight checkpoint of `--shape` (the published layout, bf16, drawn on the
   GPU) once, then runs a fixed prompt set at each tp in `--tps` (torchrun for tp > 1, NCCL): 12 greedy
   tokens per prompt and the logits of the last step. Prints each tp against tp=1: tokens equal, first
   token that differs, largest |logit difference| and relative difference of the last logits (over the
   prompts whose tokens agree, where those logits share a context), argmax agreement; and whether each
   tp's decode lookahead (the run repeated without logits) gave its own tokens again.
2. Scaling (`--bench SHAPE:TPS;...`): the engine benchmark (`python -m inference bench --random-weights
   SHAPE --tp N`) at batch 1 and 16, 512 in / 128 out, with its bandwidth floor per rank.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are set for every process started here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from inference.entrypoints.bench_shapes import SHAPES

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PROMPT_LENS = (7, 100, 513, 1000)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU (gloo) only to try the script out


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(10)
    return [torch.randint(0, 150000, (n,), generator=g).tolist() for n in PROMPT_LENS]


def worker(model: str, out: str) -> None:
    """One rank (or the only process): the prompts' greedy tokens and last logits, saved by rank 0."""
    from inference.config import EngineConfig, SamplingParams
    from inference.distributed import exit_process
    from inference.engine.llm_engine import start_engine

    tp = int(os.environ.get("WORLD_SIZE", 1))
    engine = start_engine(EngineConfig(model=model, device=DEVICE, dtype="bfloat16", tp=tp, max_num_seqs=8,
                                       max_model_len=2048, enable_prefix_caching=False))
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True, logits="last")
    tokens, logits = engine.generate_with_logits(prompts(), params)  # rank 0 only (ranks > 0 end in start_engine)
    # again without logits: decode then runs ahead (lookahead), which must not change a token
    fast = engine.generate(prompts(), dataclasses.replace(params, logits="none"))
    torch.save({"tokens": tokens, "logits": logits, "lookahead_same": fast == tokens}, out)
    engine.shutdown()
    exit_process(0)


def write_model(shape: str, layers: int | None, root: Path) -> Path:
    from inference.models.demo import DEMO_CONFIG, random_weights, write_checkpoint

    cfg = {**SHAPES.get(shape, {}), **({"num_hidden_layers": layers} if layers else {})}  # "demo": the demo's
    weights = random_weights({**DEMO_CONFIG, **cfg}, seed=0, dtype=torch.bfloat16, device=DEVICE)
    return write_checkpoint(root / shape, weights=weights, shards=8, **cfg)


def run_tp(model: Path, tp: int, out: Path) -> None:
    script = [str(Path(__file__).resolve()), "--worker", str(model), str(out)]
    cmd = [sys.executable, *script] if tp == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}", *script]
    env = {**os.environ, **NO_MULTICAST, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, timeout=300)


def correctness(shape: str, tps: list[int], layers: int | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="tp-check-"))
    model = write_model(shape, layers, root)
    results = {}
    for tp in tps:
        run_tp(model, tp, root / f"tp{tp}.pt")
        results[tp] = torch.load(root / f"tp{tp}.pt")
    ref = results[tps[0]]
    print(f"\n{shape} bf16 ({layers or 'all'} layers), prompts of {PROMPT_LENS} tokens, 12 greedy tokens each; "
          "logit differences over the prompts whose tokens agree:")
    print(f"| tp | tokens equal to tp={tps[0]} | first differing token (prompt: index) | max abs logit diff "
          "| relative diff | argmax agrees | lookahead same tokens |")
    print("|---|---|---|---|---|---|---|")
    for tp in tps[1:]:
        r = results[tp]
        eq = [a == b for a, b in zip(r["tokens"], ref["tokens"])]  # the last logits share a context there
        first = next((f"{i}: {next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)}"
                      for i, (a, b) in enumerate(zip(r["tokens"], ref["tokens"])) if a != b), "none")
        rows = torch.tensor(eq) if any(eq) else torch.ones(len(eq), dtype=torch.bool)
        diff = r["logits"].float()[rows] - ref["logits"].float()[rows]
        rel = (diff.norm() / ref["logits"].float()[rows].norm()).item()
        agree = (r["logits"].argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()
        print(f"| {tp} | {sum(eq)}/{len(eq)} | {first} | {diff.abs().max().item():.4f} | {rel:.2e} "
              f"| {100 * agree:.0f} % | {'yes' if r['lookahead_same'] else 'NO'} |")
    print(f"tp={tps[0]} lookahead same tokens: {'yes' if ref['lookahead_same'] else 'NO'}")
    print("tokens:", json.dumps({tp: results[tp]["tokens"][0] for tp in tps}))


def scaling(spec: str) -> None:
    for item in spec.split(";"):
        shape, tps = item.split(":")
        for tp in tps.split(","):
            cmd = [sys.executable, "-m", "inference", "bench", "--random-weights", shape, "--dtype", "bfloat16",
                   "--device", "cuda", "--tp", tp, "--cases", "1:512:128,16:512:128", "--max-num-seqs", "16",
                   "--max-model-len", "2048"]
            r = subprocess.run(cmd, env={**os.environ, **NO_MULTICAST}, capture_output=True, text=True, timeout=600)
            rows = [line for line in r.stdout.splitlines() if line.startswith(shape)]
            print("\n".join(rows) if rows else f"{shape} tp{tp}: failed\n{r.stderr[-2000:]}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--shape", default="7b", choices=[*SHAPES, "demo"], help="demo: the tiny demo shape")
    p.add_argument("--tps", default="1,2")
    p.add_argument("--layers", type=int, default=None, help="fewer layers than the shape has (quicker)")
    p.add_argument("--bench", default="", help='scaling runs, e.g. "14b:1,2;72b:4,8"')
    a = p.parse_args()
    os.environ.update(NO_MULTICAST)
    tps = [int(t) for t in a.tps.split(",") if t]
    if len(tps) > 1:
        correctness(a.shape, tps, a.layers)
    if a.bench:
        scaling(a.bench)


if __name__ == "__main__":
    main()
