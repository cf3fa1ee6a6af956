"""`--task logits`: all-position logits of two configurations over a prompt set, compared.

The reference side runs first, then the model side, one engine at a time (the first is shut down and
its memory freed before the second loads). Each side dumps its logits per prompt into
`<out>/logits_<side>/p<i>.safetensors` (atomically), so an interrupted run resumes: prompts already
compared are skipped, and a side whose dumps are complete is not loaded again. A side with `tp > 1`
(or any side while this process is a torchrun rank) runs in its own `python -m inference eval --task
logits-dump` process, which torchrun can span over several devices. The dumps are deleted at the end
unless `--keep-logits`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from inference.config import EngineConfig, SamplingParams
from inference.errors import UserError
from inference.eval.logits_metrics import aggregate, compare_logits, format_table, load_prompts
from inference.eval.progress import ProgressBar, print_load_progress
from inference.eval.results import PartialResults, atomic_write_text, prepare_out_dir, write_csv, write_json
from inference.eval.runner import EvalRequest, close_engine, get_rank, open_engine, run_requests
from inference.tokenizer import QwenTokenizer

LOGITS_WINDOW_BYTES = 1 << 30  # all-position logits in flight at most (float32 [tokens, vocab])
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_SIGNALS_TO_HANDLE")


def side_signature(cfg: EngineConfig) -> dict:
    return {"model": str(Path(cfg.model).resolve()), "dtype": cfg.dtype, "device": cfg.device, "tp": cfg.tp,
            "quant": cfg.quant}


def describe(sig: dict) -> str:
    return (f"{sig['model']} (dtype {sig['dtype']}, device {sig['device']}, tp {sig['tp']}, "
            f"quant {sig['quant'] or 'none'})")


def _window_tokens(cfg: EngineConfig) -> int:
    try:
        from inference.config import ModelConfig

        vocab = ModelConfig.from_dir(cfg.model).vocab_size
    except UserError:
        vocab = 151936
    return max(1, LOGITS_WINDOW_BYTES // (4 * vocab))


def _in_multi_rank_job() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# -- one side --------------------------------------------------------------------------------------------
def dump_logits(engine, ids: list[list[int]], indices: list[int], dump_dir: Path, window_tokens: int,
                quiet: bool = False, desc: str = "logits") -> None:
    """Run prompts `indices` through `engine`; their [len, vocab] logits go to dump_dir/p<i>.safetensors."""
    from safetensors.torch import save_file

    params = SamplingParams(max_new_tokens=1, temperature=0.0, logits="all")
    reqs = [EvalRequest(f"p{i}", ids[i], params) for i in indices]
    bar = ProgressBar(len(reqs), desc, enabled=not quiet)

    def on_done(f) -> None:
        logits = f.logits.detach().to("cpu").float().contiguous()
        if logits.dim() != 2 or logits.shape[0] != len(f.prompt_ids):
            raise RuntimeError(f"engine returned logits of shape {tuple(logits.shape)} for a prompt of "
                               f"{len(f.prompt_ids)} tokens (logits='all' must give [prompt_len, vocab])")
        path = dump_dir / f"{f.item_id}.safetensors"
        tmp = dump_dir / f".{f.item_id}.tmp-{os.getpid()}"
        save_file({"logits": logits}, str(tmp))
        os.replace(tmp, path)

    try:
        run_requests(engine, reqs, on_done, bar, window_tokens=window_tokens)
    finally:
        bar.close()


def _prepare_dump_dir(dump_dir: Path, meta: dict) -> None:
    meta_path = dump_dir / "meta.json"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != meta:
            shutil.rmtree(dump_dir)
    dump_dir.mkdir(parents=True, exist_ok=True)
    if not meta_path.is_file():
        atomic_write_text(meta_path, json.dumps(meta, indent=2))


def run_side(name: str, cfg: EngineConfig, ids: list[list[int]], indices: list[int], dump_dir: Path,
             meta: dict, quiet: bool) -> None:
    """Make sure dump_dir holds the logits of prompts `indices` under `cfg` (running what is missing)."""
    _prepare_dump_dir(dump_dir, meta)
    missing = [i for i in indices if not (dump_dir / f"p{i}.safetensors").is_file()]
    if not missing:
        return
    if not quiet:
        print(f"{name}: {describe(side_signature(cfg))}, {len(missing)} prompts", file=sys.stderr)
    if cfg.tp == 1 and not _in_multi_rank_job():
        engine = open_engine(cfg, progress=None if quiet else print_load_progress())
        try:
            dump_logits(engine, ids, missing, dump_dir, _window_tokens(cfg), quiet, desc=name)
        finally:
            close_engine(engine)
        return
    # a separate process, under torchrun when tp > 1 (python -m inference does the relaunch)
    job = {"engine": dataclasses.asdict(cfg), "ids": [ids[i] for i in missing], "indices": missing}
    atomic_write_text(dump_dir / "job.json", json.dumps(job))
    cmd = [sys.executable, "-m", "inference", "eval", "--task", "logits-dump", "--model", str(cfg.model),
           "--tp", str(cfg.tp), "--dump-dir", str(dump_dir)] + (["--quiet"] if quiet else [])
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise UserError(f"the {name} side failed (exit code {rc}; its messages are above); "
                        "run the same command again to resume")


def run_dump_job(args) -> int:
    """`--task logits-dump` (internal): one side in its own process, as job.json in --dump-dir asks."""
    dump_dir = Path(args.dump_dir)
    try:
        job = json.loads((dump_dir / "job.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{dump_dir / 'job.json'}: cannot read the dump job ({e})") from e
    cfg = EngineConfig(**job["engine"])
    ids = dict(zip(job["indices"], job["ids"]))
    engine = open_engine(cfg, progress=None if args.quiet else print_load_progress())  # rank 0 only returns
    try:
        dump_logits(engine, ids, list(ids), dump_dir, _window_tokens(cfg), args.quiet)
    finally:
        close_engine(engine)
    return 0


# -- both sides and the comparison -----------------------------------------------------------------------
def run_logits(args, cfg_model: EngineConfig, cfg_ref: EngineConfig) -> int:
    if get_rank() != 0:
        return 0  # each side starts its own processes; extra torchrun ranks have nothing to do
    t0 = time.monotonic()
    prompts = load_prompts(args.prompts)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    tok = QwenTokenizer.from_dir(cfg_model.model)
    ids = [tok.encode(p) for p in prompts]
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    out = prepare_out_dir(args.out)
    sig = {"task": "logits", "model": side_signature(cfg_model), "reference": side_signature(cfg_ref),
           "prompts_sha": digest}
    partial = PartialResults(out / "logits_progress.jsonl", sig, restart=args.restart)
    todo = [i for i in range(len(ids)) if f"p{i}" not in partial]
    resumed = len(ids) - len(todo)
    if resumed:
        print(f"resuming: {len(ids) - len(todo)} of {len(ids)} prompts already compared "
              f"({partial.path}; --restart starts over)", file=sys.stderr)
    dirs = {"reference": out / "logits_reference", "model": out / "logits_model"}
    if todo:
        for name, cfg in (("reference", cfg_ref), ("model", cfg_model)):
            run_side(name, cfg, ids, todo, dirs[name], {**side_signature(cfg), "prompts_sha": digest},
                     args.quiet)
        from safetensors.torch import load_file

        with partial:
            for i in todo:
                ref = load_file(str(dirs["reference"] / f"p{i}.safetensors"))["logits"]
                cand = load_file(str(dirs["model"] / f"p{i}.safetensors"))["logits"]
                partial.add(f"p{i}", {"prompt": prompts[i], **compare_logits(ref, cand)})
    per_prompt = [partial.records[f"p{i}"] for i in range(len(ids))]
    summary = aggregate(per_prompt)
    keys = [k for k in per_prompt[0] if k not in ("id", "prompt")]
    write_csv(out / "logits_results.csv", ["id", "prompt", *keys],
              [[r["id"], r["prompt"], *(r[k] for k in keys)] for r in per_prompt])
    write_json(out / "logits_results.json", {
        "task": "logits", "config": sig, "items_run": len(todo), "items_resumed": resumed,
        "elapsed_s": round(time.monotonic() - t0, 3), "summary": summary, "prompts": per_prompt})
    if not args.keep_logits:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    for name in ("model", "reference"):
        print(f"{name + ':':<11}{describe(sig[name])}")
    print(format_table(summary))
    print(f"results: {out / 'logits_results.json'}, {out / 'logits_results.csv'}")
    return 0
