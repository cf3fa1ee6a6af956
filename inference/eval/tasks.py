"""`--task ceval` and `--task boolq`: load and check the data, run the engine, score, write results.

Data is read and checked on every rank before any engine starts, so bad data ends the whole job with
one clear error. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from inference.config import SamplingParams
from inference.eval import boolq, ceval
from inference.eval.progress import ProgressBar, print_load_progress
from inference.eval.results import PartialResults, prepare_out_dir, write_csv, write_json
from inference.eval.runner import EvalRequest, close_engine, get_rank, open_engine, run_requests
from inference.tokenizer import QwenTokenizer


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def base_signature(task: str, cfg, data: str) -> dict:
    return {"task": task, "model": str(Path(cfg.model).resolve()), "dtype": cfg.dtype, "device": cfg.device,
            "tp": cfg.tp, "quant": cfg.quant, "data": str(Path(data).resolve())}


def _run(task: str, cfg, args, requests: list[EvalRequest], partial: PartialResults, score
         ) -> tuple[int, int]:
    """Run the requests not yet in `partial` through one engine; `score(finished, tokenizer)` -> record.
    Returns (items run, items resumed)."""
    todo = [r for r in requests if r.item_id not in partial]
    resumed = len(requests) - len(todo)
    if get_rank() == 0 and resumed:
        print(f"resuming: {resumed} of {len(requests)} items already done "
              f"({partial.path}; --restart starts over)", file=sys.stderr)
    if not todo:
        return 0, resumed
    quiet = args.quiet
    engine = open_engine(cfg, progress=None if quiet else print_load_progress())  # rank 0 only returns
    bar = ProgressBar(len(todo), task, enabled=not quiet)
    try:
        with partial:
            run_requests(engine, todo, lambda f: partial.add(f.item_id, score(f, engine.tokenizer)), bar)
    finally:
        bar.close()
        close_engine(engine)
    return len(todo), resumed


def _finish_info(t0: float, ran: int, resumed: int) -> dict:
    return {"items_run": ran, "items_resumed": resumed, "elapsed_s": round(time.monotonic() - t0, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# -- C-Eval ----------------------------------------------------------------------------------------------
def run_ceval(args, cfg) -> int:
    t0 = time.monotonic()
    subjects = ceval.load_ceval(args.data, args.subjects, args.shots, args.limit)
    tok = QwenTokenizer.from_dir(cfg.model)
    generate = args.scoring == "generate"
    params = (SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0) if generate
              else SamplingParams(max_new_tokens=1, temperature=0.0, logits="last"))
    requests = [EvalRequest(it.item_id, tok.encode(ceval.build_prompt(s, it)), params)
                for s in subjects for it in s.items]
    items = {it.item_id: it for s in subjects for it in s.items}
    out = prepare_out_dir(args.out) if get_rank() == 0 else Path(args.out)
    sig = {**base_signature("ceval", cfg, args.data), "scoring": args.scoring, "shots": args.shots,
           **({"max_new_tokens": args.max_new_tokens} if generate else {})}
    partial = PartialResults(out / "ceval_progress.jsonl", sig, restart=args.restart,
                             writer=get_rank() == 0)
    choice_ids = ceval.choice_token_ids(tok)

    def score(f, tokenizer) -> dict:
        it = items[f.item_id]
        rec = {"subject": it.subject, "answer": it.answer}
        if generate:
            text = tokenizer.decode(f.token_ids)
            rec.update(pred=ceval.parse_generation(text), output=text)
        else:
            pred, scores = ceval.predict_from_logits(f.logits, choice_ids)
            rec.update(pred=pred, scores=scores)
        rec["correct"] = rec["pred"] == it.answer
        return rec

    ran, resumed = _run("ceval", cfg, args, requests, partial, score)
    if get_rank() != 0:
        return 0
    summary = ceval.summarize(subjects, partial.records)
    write_results_ceval(out, sig, summary, subjects, partial.records, _finish_info(t0, ran, resumed))
    print(format_ceval(summary, out))
    return 0


def write_results_ceval(out: Path, sig: dict, summary: dict, subjects, records: dict, info: dict) -> None:
    rows = []
    for s in subjects:
        for it in s.items:
            r = records.get(it.item_id)
            if r is not None:
                rows.append([it.item_id, it.subject, it.answer, r["pred"], int(bool(r["correct"])),
                             r.get("output", ""), it.source])
    write_csv(out / "ceval_items.csv",
              ["id", "subject", "answer", "prediction", "correct", "output", "source"], rows)
    table = [["subject", s["subject"], s["name"], s["category"], s["correct"], s["total"], s["accuracy"]]
             for s in summary["subjects"]]
    table += [["category", c["category"], c["category"], c["category"], c["correct"], c["total"],
               c["accuracy"]] for c in summary["categories"]]
    o = summary["overall"]
    table.append(["total", "total", "total", "", o["correct"], o["total"], o["accuracy"]])
    write_csv(out / "ceval_results.csv",
              ["level", "subject", "name", "category", "correct", "total", "accuracy"], table)
    write_json(out / "ceval_results.json", {"task": "ceval", "config": sig, **info, **summary})


def format_ceval(summary: dict, out: Path) -> str:
    lines = [f"{'subject':<44}{'correct':>9}{'total':>7}{'accuracy':>10}"]
    for s in summary["subjects"]:
        lines.append(f"{s['subject']:<44}{s['correct']:>9}{s['total']:>7}{_pct(s['accuracy']):>10}")
    lines.append("-" * 70)
    for c in summary["categories"]:
        lines.append(f"{c['category']:<44}{c['correct']:>9}{c['total']:>7}{_pct(c['accuracy']):>10}")
    o = summary["overall"]
    lines.append(f"{'overall':<44}{o['correct']:>9}{o['total']:>7}{_pct(o['accuracy']):>10}")
    lines.append(f"results: {out / 'ceval_results.json'}, {out / 'ceval_results.csv'}, "
                 f"{out / 'ceval_items.csv'}")
    return "\n".join(lines)


# -- BoolQ -----------------------------------------------------------------------------------------------
def run_boolq(args, cfg) -> int:
    t0 = time.monotonic()
    items = boolq.load_boolq(args.data, args.limit)
    tok = QwenTokenizer.from_dir(cfg.model)
    params = SamplingParams(max_new_tokens=1, temperature=0.0, logits="last")
    requests = [EvalRequest(it.item_id, tok.encode(boolq.build_prompt(it)), params) for it in items]
    by_id = {it.item_id: it for it in items}
    out = prepare_out_dir(args.out) if get_rank() == 0 else Path(args.out)
    sig = base_signature("boolq", cfg, args.data)
    partial = PartialResults(out / "boolq_progress.jsonl", sig, restart=args.restart,
                             writer=get_rank() == 0)
    yes_id, no_id = boolq.yes_no_ids(tok)

    def score(f, tokenizer) -> dict:
        it = by_id[f.item_id]
        pred, lp_yes, lp_no = boolq.predict(f.logits, yes_id, no_id)
        return {"file": it.file, "answer": it.answer, "pred": pred, "correct": pred == it.answer,
                "logprob_yes": boolq.finite(lp_yes), "logprob_no": boolq.finite(lp_no)}

    ran, resumed = _run("boolq", cfg, args, requests, partial, score)
    if get_rank() != 0:
        return 0
    summary = boolq.summarize(items, partial.records)
    rows = []
    for it in items:
        r = partial.records.get(it.item_id)
        if r is not None:
            rows.append([it.item_id, it.answer, r["pred"], int(bool(r["correct"])), r["logprob_yes"],
                         r["logprob_no"], it.source])
    write_csv(out / "boolq_items.csv", ["id", "answer", "prediction", "correct", "logprob_yes", "logprob_no",
                                        "source"], rows)
    table = [[f["file"], f["correct"], f["total"], f["accuracy"]] for f in summary["files"]]
    o = summary["overall"]
    table.append(["total", o["correct"], o["total"], o["accuracy"]])
    write_csv(out / "boolq_results.csv", ["file", "correct", "total", "accuracy"], table)
    write_json(out / "boolq_results.json", {"task": "boolq", "config": sig, **_finish_info(t0, ran, resumed),
                                            **summary})
    for f in summary["files"]:
        print(f"{f['file']:<40}{f['correct']:>9}{f['total']:>7}{_pct(f['accuracy']):>10}")
    print(f"{'overall':<40}{o['correct']:>9}{o['total']:>7}{_pct(o['accuracy']):>10}")
    print(f"results: {out / 'boolq_results.json'}, {out / 'boolq_results.csv'}, {out / 'boolq_items.csv'}")
    return 0
