"""Multi-turn TTFT: a 10-turn conversation with KV reuse, without reuse, and after an engine restart.

    python bench/multiturn.py                                  # demo model, CPU/GPU (auto)
    python bench/multiturn.py --random-weights 7b --device cuda --dtype float16

Each turn's prompt is the whole history (stored reply token ids, so it is token-identical) plus a
new user message. Three passes over the same prompts, each on a fresh engine:
  reuse    prefix caching in memory (and the disk tier, writing in the background, as `serve` runs)
  no reuse prefix caching off: every turn recomputes the whole history
  restart  a new engine over the first one's disk store; before each turn its memory cache is
           emptied and the disk keeps only the blocks of the earlier turns, so each turn is the first
           turn after a restart at that depth: history from disk, the new message computed
TTFT is wall time from add_request to the step that returns the first token (synchronized).
No warm-up turns: each pass measures what a user gets right after `serve` starts (the engine warms its
CUDA kernels up at start: inference/engine/warmup.py; QWEN_CHAT_WARMUP=0 shows the turns without it).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from inference.config import SamplingParams
from inference.engine.sequence import Sequence
from inference.entrypoints.bench_shapes import SHAPES
from inference.entrypoints.cli_args import add_engine_args, engine_config_from_args
from inference.errors import UserError

WORDS = ("cache block token prefix model turn session disk memory reuse answer question history layer "
         "attention key value engine request reply context window batch kernel tensor rank").split()


def parse_args(argv):
    p = argparse.ArgumentParser(allow_abbrev=False, prog="bench/multiturn.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--user-tokens", type=int, default=96, help="tokens of each new user message")
    p.add_argument("--reply-tokens", type=int, default=64, help="tokens of each reply (fixed length)")
    p.add_argument("--random-weights", choices=sorted(SHAPES), help="random weights of a published shape (GPU)")
    p.add_argument("--repeat", type=int, default=3, help="passes (fresh engines each); medians are reported")
    p.add_argument("--passes", default="reuse,no_reuse,restart",
                   help="which passes to run (reuse always runs: it builds the prompts)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--profile-turns", type=lambda v: {int(x) for x in v.split(",")}, default=set(),
                   help="comma list of turns to profile to the first token (reuse pass, first repeat), to stderr")
    add_engine_args(p)
    a = p.parse_args(argv)
    if a.tp != 1:
        raise UserError("bench/multiturn.py runs one process with several engines in turn: use --tp 1")
    if min(a.turns, a.user_tokens, a.reply_tokens, a.repeat) < 1:
        raise UserError("--turns, --user-tokens, --reply-tokens and --repeat must be positive")
    a.passes = set(a.passes.split(",")) | {"reuse"}
    if not a.passes <= {"reuse", "no_reuse", "restart"}:
        raise UserError("--passes takes a comma list of reuse, no_reuse, restart")
    if a.no_kv_disk and "restart" in a.passes:
        raise UserError("--no-kv-disk leaves nothing on disk for the restart pass: add --passes reuse,no_reuse")
    return a


def user_message(tok, turn: int, n: int) -> list[int]:
    rnd = random.Random(turn)
    text = f"Turn {turn + 1}: please read these notes and answer briefly. "
    text += " ".join(rnd.choice(WORDS) for _ in range(2 * n))
    return tok.encode(text)[:n]


def next_prompt(tok, prompt: list[int], reply: list[int], user: list[int]) -> list[int]:
    """The next turn's ChatML prompt: this prompt + the reply ids + <|im_end|> + the new user block, as
    `chat_ids` of the whole history gives it (derived with a one-token dummy reply, so random weights'
    replies may hold ids the tokenizer cannot render, such as the padding rows of the vocabulary)."""
    one = {"role": "user", "content": "", "token_ids": [16]}
    a = tok.chat_ids([one])
    b = tok.chat_ids([one, {"role": "assistant", "content": "", "token_ids": [16]},
                      {"role": "user", "content": "", "token_ids": user}])
    return prompt + reply + [tok.im_end_id] + b[len(a) + 2:]


def make_engine(a, **overrides):
    from inference.engine.llm_engine import start_engine

    gc.collect()  # the previous pass's engine (its device memory) is gone before the next one starts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cfg = engine_config_from_args(a)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    if a.random_weights:
        cfg.extra["random_weights"] = True
    return start_engine(cfg)


def sync(engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def turn(engine, prompt: list[int], n: int, profile: bool = False) -> tuple[list[int], float, int]:
    """(reply ids, TTFT ms, cached tokens) of one greedy request, alone in the engine; `profile`: print a
    profile of the time to the first token."""
    sync(engine)
    prof = start_profile() if profile else None
    t0 = time.perf_counter()
    rid = engine.add_request(prompt, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))
    ttft, reply, cached = None, [], 0
    while engine.has_unfinished():
        for o in engine.step():
            if o.request_id != rid:
                continue
            if ttft is None and o.new_token_ids:
                sync(engine)
                ttft = (time.perf_counter() - t0) * 1000
                if prof is not None:
                    print_profile(prof)
            reply += o.new_token_ids
            cached = o.usage.cached_tokens if o.finished else cached
    return reply, ttft, cached


def start_profile():
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
    prof.__enter__()
    return prof


def print_profile(prof) -> None:
    """Where the host and the device spent the time to the first token (stderr)."""
    prof.__exit__(None, None, None)
    avg = prof.key_averages()
    print(avg.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50), file=sys.stderr)
    if torch.cuda.is_available():
        print(avg.table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50), file=sys.stderr)


def keep_only_history(engine, prompt: list[int], history_len: int) -> None:
    """Drop from the disk store the blocks of `prompt` past its first `history_len` tokens' computed
    blocks (a restart right before this turn would not have them)."""
    store, bs = engine.kv_disk.store, engine.block_manager.block_size
    store.drain()
    probe = Sequence("probe", prompt, SamplingParams())
    for h in engine.block_manager.disk_chain(probe, lambda h: True)[max(history_len - 1, 0) // bs:]:
        store.discard(h)


def release(engine) -> None:
    engine.shutdown()
    del engine
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pass_reuse(a, kv_dir, rows, prompts=None):
    """Turn by turn with prefix caching (memory + disk); builds the prompts on the first call."""
    engine = make_engine(a, enable_prefix_caching=True, kv_disk_dir=None if a.no_kv_disk else kv_dir)
    build = prompts is None
    tok, prompts, history, reply = engine.tokenizer, prompts or [], [0], []
    for i, row in enumerate(rows):
        if build:
            user = user_message(tok, i, a.user_tokens)
            prompts.append(next_prompt(tok, prompts[-1], reply, user) if i else
                           tok.chat_ids([{"role": "user", "content": "", "token_ids": user}]))
        reply, ms, row["reuse_cached"] = turn(engine, prompts[i], a.reply_tokens, profile=i + 1 in a.profile_turns)
        row.setdefault("reuse_ms", []).append(ms)
        row["prompt"] = len(prompts[i])
        history.append(len(prompts[i]) + len(reply))
    label = f"{a.random_weights or Path(a.model).name} {str(engine.dtype).removeprefix('torch.')} on " + (
        torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu")
    if engine.warmup_s is not None:
        label += f" (engine warm-up at start {engine.warmup_s:.1f} s)"
    release(engine)  # drains the disk writer
    return prompts, history, label


def pass_no_reuse(a, rows, prompts) -> None:
    engine = make_engine(a, enable_prefix_caching=False, kv_disk_dir=None)
    for row, prompt in zip(rows, prompts):
        row.setdefault("no_reuse_ms", []).append(turn(engine, prompt, 1)[1])
    release(engine)


def pass_restart(a, kv_dir, rows, prompts, history) -> dict:
    engine = make_engine(a, enable_prefix_caching=True, kv_disk_dir=kv_dir)
    for row, prompt, hist in zip(rows, prompts, history):
        engine.block_manager.drop_cached()  # nothing in memory: the history comes from disk
        keep_only_history(engine, prompt, hist)
        _, ms, row["restart_cached"] = turn(engine, prompt, 1)
        row.setdefault("restart_ms", []).append(ms)
    disk = engine.stats()
    release(engine)
    return disk


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.random_weights:
        from inference.models.demo import write_checkpoint

        a.model = str(write_checkpoint(Path(tempfile.mkdtemp(prefix="qwen-mt-")) / a.random_weights,
                                       with_weights=False, **SHAPES[a.random_weights]))
    rows = [{"turn": i + 1} for i in range(a.turns)]
    prompts = None
    for r in range(a.repeat):  # fresh engines and a fresh disk store each time; the median is reported
        kv_dir = tempfile.mkdtemp(prefix="qwen-mt-kv-")
        prompts, history, label = pass_reuse(a, kv_dir, rows, prompts)
        a.profile_turns = set()
        if r == 0:
            print(f"multi-turn TTFT: {label}, {a.turns} turns, {a.user_tokens} user + {a.reply_tokens} reply "
                  f"tokens per turn, block size {a.block_size}, median of {a.repeat}", file=sys.stderr)
        if "no_reuse" in a.passes:
            pass_no_reuse(a, rows, prompts)
        disk = pass_restart(a, kv_dir, rows, prompts, history) if "restart" in a.passes else None
        shutil.rmtree(kv_dir, ignore_errors=True)
    for row in rows:
        for k in ("reuse_ms", "no_reuse_ms", "restart_ms"):
            if k in row:
                row[k + "_all"], row[k] = row[k], statistics.median(row[k])
    print_table(rows)
    first, last = rows[0], rows[-1]
    ratios = [f"{name} {last[k] / first[k]:.2f}x" for name, k in (("without reuse", "no_reuse_ms"),
                                                                  ("after restart", "restart_ms")) if k in last]
    print(f"\nturn {last['turn']} / turn 1 TTFT with reuse: {last['reuse_ms'] / first['reuse_ms']:.2f}x"
          + (f" ({', '.join(ratios)})" if ratios else "")
          + ("" if disk is None else f"; disk store: {disk['kv_disk_blocks']} blocks, "
             f"{disk['kv_disk_bytes'] / 2**20:.1f} MiB, {disk['kv_disk_loaded']} loaded, "
             f"{disk['kv_disk_skipped']} left on disk (recomputing was faster), {disk['kv_disk_corrupt']} corrupt"))
    if a.json:
        Path(a.json).write_text(json.dumps({"label": label, "rows": rows}, indent=2))
    return 0


def print_table(rows) -> None:
    cols = [("turn", "turn"), ("prompt", "prompt tok"), ("reuse_cached", "reuse: cached"),
            ("reuse_ms", "reuse: TTFT ms"), ("no_reuse_ms", "no reuse: TTFT ms"),
            ("restart_cached", "restart: cached"), ("restart_ms", "restart (disk): TTFT ms")]
    cols = [c for c in cols if c[0] in rows[0]]
    cells = [[f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    print("| " + " | ".join(h.rjust(w) for (_, h), w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(x.rjust(w) for x, w in zip(c, widths)) + " |")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
