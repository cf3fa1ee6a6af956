"""`qwen-chat compare`: the same prompts through two engines, greedy, and a report side by side.

    qwen-chat compare --model 14b --against 14b --b-quant w8a8 --prompts prompts.jsonl --out report.md
    qwen-chat compare --model 7b-chat --against 14b-chat --prompts prompts.txt --max-new-tokens 64

Both engines run as background servers (started if needed, left running: `qwen-chat stop`). Per prompt:
the first token index where the replies differ, the token agreement, the mean log-probability of each
reply under engine A, and each side's speed; then a summary row. B's engine flags default to A's
(`--b-quant none` for no quantization). With --out, finished prompts are also appended to
<out without extension>.progress.jsonl: the same command again resumes (--restart starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.errors import CliParser, UserError

FORMATS = (".md", ".json", ".html")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from inference.entrypoints.cli_args import add_engine_args

    p = CliParser(prog="qwen-chat compare", description=__doc__, allow_abbrev=False,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl "
                                                    "({\"prompt\": ...} or {\"messages\": [...]} per line)")
    p.add_argument("--out", help="report file: .md, .json or .html (default: a markdown table on stdout)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per reply (default 128)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default 1 (greedy, unpenalized)")
    p.add_argument("--restart", action="store_true", help="discard the finished prompts of an earlier run")
    p.add_argument("--socket", help="engine A's socket (default: the one for its configuration)")
    b = p.add_argument_group("engine B (each flag defaults to engine A's)")
    b.add_argument("--against", help="engine B's model (default: --model)")
    b.add_argument("--b-quant", choices=("w8a16", "w8a8", "none"))
    b.add_argument("--b-dtype")
    b.add_argument("--b-device")
    b.add_argument("--b-tp", type=positive_int)
    b.add_argument("--b-socket", help="engine B's socket (default: the one for its configuration)")
    add_engine_args(p)
    return p


def engine_b(a: argparse.Namespace) -> dict:
    quant = a.quant if a.b_quant is None else (None if a.b_quant == "none" else a.b_quant)
    return {"model": a.against or a.model, "dtype": a.b_dtype or a.dtype, "device": a.b_device or a.device,
            "tp": a.b_tp or a.tp, "quant": quant, "socket": a.b_socket}


def start(side: str, engine: dict, extra: list[str]) -> Path:
    from inference.client.launcher import EngineStartError, ensure_server

    last = [None]

    def progress(done, total, what):
        if (done, total, what) != last[0] and not (total == 0 and what == "starting"):  # said just before
            last[0] = (done, total, what)
            print(f"engine {side}: " + (f"[{done}/{total}] {what}" if total else what), file=sys.stderr, flush=True)

    try:
        return ensure_server(extra_args=extra, progress=progress, **engine)
    except EngineStartError as e:
        raise UserError(f"engine {side}: {str(e).splitlines()[0]} (log: {e.log_file}); on one GPU, give "
                        "--gpu-memory-utilization 0.45 so that both engines fit") from None


def run(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from inference.client import EngineClient
    from inference.client.launcher import describe
    from inference.compare.prompts import load_prompts
    from inference.compare.report import render
    from inference.compare.runner import compare_one
    from inference.entrypoints.generate_remote import serve_args
    from inference.eval.results import PartialResults, atomic_write_text
    from inference.model_path import resolve_model

    kind = Path(a.out).suffix.lower() if a.out else ".md"
    if kind not in FORMATS:
        raise UserError(f"--out {a.out}: the report is .md, .json or .html (chosen by the file's extension)")
    if not 0 < a.repetition_penalty <= 10:
        raise UserError(f"--repetition-penalty must be in (0, 10], got {a.repetition_penalty}")
    prompts = load_prompts(a.prompts)
    eng_a = {"model": a.model, "dtype": a.dtype, "device": a.device, "tp": a.tp, "quant": a.quant,
             "socket": a.socket}
    eng_b = engine_b(a)
    fields = {"max_new_tokens": a.max_new_tokens, "temperature": 0, "repetition_penalty": a.repetition_penalty}
    signature = {s: {**{k: v for k, v in e.items() if k != "socket"}, "model": str(resolve_model(e["model"]))}
                 for s, e in (("a", eng_a), ("b", eng_b))} | fields
    state = Path(a.out).with_suffix(".progress.jsonl") if a.out else None
    extra = serve_args(a, parser)
    paths = {"a": start("A", eng_a, extra), "b": start("B", eng_b, extra)}
    with EngineClient(paths["a"]) as ca, EngineClient(paths["b"]) as cb:
        health = {"a": ca.health(), "b": cb.health()}
        engines = {s: describe(h) for s, h in health.items()}
        if any(h.get("demo") for h in health.values()):
            print("note: demo model (pipeline demo: random weights, its text is noise)", file=sys.stderr)
        done = PartialResults(state, signature, restart=a.restart) if state else None
        records = []
        try:
            redo = {p.id for p in prompts if not (done and p.id in done and not _failed(done.records[p.id]))}
            if len(redo) < len(prompts):
                print(f"resuming: {len(prompts) - len(redo)} of {len(prompts)} prompts done in {state}",
                      file=sys.stderr)
            for n, p in enumerate(prompts, 1):
                if p.id not in redo:
                    records.append(done.records[p.id])
                    continue
                rec = compare_one(ca, cb, p, fields)
                if done is not None:
                    done.add(p.id, rec)
                records.append(rec)
                print(f"[{n}/{len(prompts)}] line {p.line}: {_said(rec)}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            if state:
                print(f"\ninterrupted: finished prompts are saved in {state}; run the same command again "
                      "to resume", file=sys.stderr)
            return 130
        finally:
            if done is not None:
                done.close()
    settings = {**fields, "prompts": str(a.prompts)}
    text = render(kind, records, engines, settings)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"report: {a.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _failed(rec: dict) -> bool:
    return bool(rec["a"].get("error") or rec["b"].get("error") or rec.get("score_error"))


def _said(rec: dict) -> str:
    errors = [f"{s.upper()} failed: {rec[s]['error']}" for s in "ab" if rec[s].get("error")]
    if errors:
        return "; ".join(errors)
    diff = "identical" if rec["first_diff"] is None else f"first difference at token {rec['first_diff']}"
    return f"{diff}, agreement {rec['agreement']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
