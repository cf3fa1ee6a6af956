"""`qwen-chat eval`: precision tests like the reference's (C-Eval 5-shot, BoolQ) and a logits comparison.

    qwen-chat eval --task ceval --data DIR --model 14b [--scoring logits] [--limit N] [--out DIR]
    qwen-chat eval --task boolq --data DIR --model 14b
    qwen-chat eval --task logits --model 14b --dtype bfloat16 --reference 14b --reference-dtype float32
    qwen-chat eval --task logits --model 14b --quant w8a8 --reference-quant none --tp 2 --reference-tp 2

Results go to --out (default eval_results/<task>): <task>_results.json, <task>_results.csv and, for
ceval/boolq, <task>_items.csv. Finished items are logged to <task>_progress.jsonl as they complete;
running the same command again resumes (--restart discards them).
C-Eval prompts follow the reference byte for byte (its subject text is the subject key with spaces,
"about  computer network."); --scoring logits picks the letter whose " X" or "X" token scores highest.
"""

from __future__ import annotations

import argparse
import copy
import sys

from inference.errors import CliParser, UserError

TASKS = ("ceval", "boolq", "logits")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from inference.entrypoints.cli_args import add_engine_args

    p = CliParser(
        prog="qwen-chat eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False)
    p.add_argument("--task", required=True, choices=(*TASKS, "logits-dump"), metavar="{ceval,boolq,logits}",
                   help="ceval: C-Eval 5-shot; boolq: BoolQ; logits: compare --model with --reference")
    p.add_argument("--data", help="dataset folder: C-Eval (subject_mapping.json, dev/, val/) or BoolQ "
                                  "(*.jsonl)")
    p.add_argument("--out", help="results folder (default: eval_results/<task>); a rerun into the same "
                                 "folder resumes an interrupted run")
    p.add_argument("--limit", type=positive_int,
                   help="at most N items per C-Eval subject / per BoolQ file / N prompts (logits)")
    p.add_argument("--restart", action="store_true",
                   help="discard the partial results in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    g = p.add_argument_group("ceval")
    g.add_argument("--scoring", choices=("generate", "logits"), default="generate",
                   help="generate: 20 greedy tokens, first non-space character (the reference's way); "
                        "logits: argmax of the A/B/C/D token logits")
    g.add_argument("--shots", type=int, default=5, help="examples from dev/ before each question (default 5)")
    g.add_argument("--subjects", help="comma-separated subject keys (default: all in subject_mapping.json)")
    g.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens generated per question")
    g = p.add_argument_group("logits")
    g.add_argument("--reference", help="the reference checkpoint (default: --model)")
    g.add_argument("--reference-dtype", help="dtype of the reference side (default: --dtype)")
    g.add_argument("--reference-tp", type=positive_int,
                   help="tensor-parallel size of the reference (default: --tp)")
    g.add_argument("--reference-quant", help="quantization of the reference side: none, w8a16, w8a8 "
                                             "(default: --quant)")
    g.add_argument("--reference-device", help="device of the reference side (default: --device)")
    g.add_argument("--prompts", help="prompt file: .txt (one per line) or .jsonl ({\"prompt\": ...}); "
                                     "default: a built-in set in English and Chinese")
    g.add_argument("--keep-logits", action="store_true", help="keep the dumped logits in --out")
    p.add_argument("--dump-dir", help=argparse.SUPPRESS)
    add_engine_args(p)
    return p


def reference_config(args):
    from inference.entrypoints.cli_args import engine_config_from_args

    ref = copy.copy(args)
    if args.reference:
        ref.model = args.reference
    for name in ("dtype", "tp", "quant", "device"):
        val = getattr(args, f"reference_{name}")
        if val is not None:
            setattr(ref, name, None if name == "quant" and val == "none" else val)
    return engine_config_from_args(ref)


def run(args) -> int:
    from inference.entrypoints.cli_args import engine_config_from_args

    if args.task == "logits-dump":
        from inference.eval.logits_compare import run_dump_job

        if not args.dump_dir:
            raise UserError("--task logits-dump is internal to --task logits and needs --dump-dir")
        return run_dump_job(args)
    if args.shots < 0:
        raise UserError(f"--shots must be 0 or more, got {args.shots}")
    if args.out is None:
        args.out = f"eval_results/{args.task}"
    if args.task in ("ceval", "boolq") and not args.data:
        raise UserError(f"--task {args.task} needs --data DIR (the dataset folder)")
    if args.subjects is not None:
        args.subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    cfg = engine_config_from_args(args)
    if args.task == "ceval":
        from inference.eval.tasks import run_ceval

        return run_ceval(args, cfg)
    if args.task == "boolq":
        from inference.eval.tasks import run_boolq

        return run_boolq(args, cfg)
    from inference.eval.logits_compare import run_logits

    return run_logits(args, cfg, reference_config(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print(f"\ninterrupted: finished items are saved in {out}; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
