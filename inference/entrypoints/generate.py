"""`qwen-chat generate`: one prompt, streamed to the terminal (or one JSON line with --json)."""

from __future__ import annotations

import argparse
import json
import sys

from inference.config import SamplingParams, generation_defaults
from inference.entrypoints.cli_args import add_engine_args, engine_config_from_args
from inference.errors import CliParser, UserError
from inference.model_path import is_demo


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(allow_abbrev=False, prog="qwen-chat generate", description="Generate from one prompt.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="raw completion prompt")
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    src.add_argument("--chat", help="one user message, wrapped in the ChatML template")
    p.add_argument("--system", default=None, help="system prompt for --chat")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: generation_config)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--connect", action="store_true",
                   help="use the background engine server of --model, starting one if none runs")
    p.add_argument("--socket", default=None, help="with --connect: the server's socket (default: the model's)")
    add_engine_args(p)
    return p


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise UserError(f"--prompt-ids must be comma-separated integers, got {text!r}") from e


def sampling(a: argparse.Namespace, model_dir: str) -> SamplingParams:
    d = generation_defaults(model_dir)
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty"):
        if getattr(a, name) is not None:
            d[name] = getattr(a, name)
    return SamplingParams(**d, seed=a.seed, ignore_eos=a.ignore_eos)


def progress_printer(done: int, total: int, what: str) -> None:
    end = "\n" if done >= total or not sys.stderr.isatty() else "\r"
    print(f"[{done}/{total}] {what}", end=end, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.connect:
        from inference.entrypoints.generate_remote import run_remote

        return run_remote(a, parser)
    from inference.engine.llm_engine import start_engine
    from inference.tokenizer import StreamDecoder

    cfg = engine_config_from_args(a)
    given_ids = parse_ids(a.prompt_ids) if a.prompt_ids is not None else None  # before loading anything
    engine = start_engine(cfg, progress=progress_printer)  # ranks > 0 end inside, after rank 0's shutdown
    try:
        if is_demo(cfg.model):
            print("note: demo model (pipeline demo: random weights, its text is noise)", file=sys.stderr)
        tok = engine.tokenizer
        if a.prompt is not None:
            ids = tok.encode(a.prompt)
        elif a.chat is not None:
            ids = tok.chat_ids([{"role": "user", "content": a.chat}], system=a.system)
        else:
            ids = given_ids
        rid = engine.add_request(ids, sampling(a, cfg.model))
        decoder, out_ids, final = StreamDecoder(tok), [], None
        while engine.has_unfinished():
            for out in engine.step():
                out_ids += out.new_token_ids
                if not a.json:
                    print(decoder.push(out.new_token_ids), end="", flush=True)
                if out.finished and out.request_id == rid:
                    final = out
        text = tok.decode(out_ids)
        if a.json:
            u = final.usage
            print(json.dumps({"token_ids": out_ids, "text": text, "finish_reason": final.finish_reason,
                              "usage": {"prompt_tokens": u.prompt_tokens, "cached_tokens": u.cached_tokens,
                                        "completion_tokens": u.completion_tokens, "ttft_ms": u.ttft_ms,
                                        "decode_tok_s": u.decode_tok_s}}, ensure_ascii=False))
        else:
            print(decoder.flush())
    finally:
        engine.shutdown()
    return 0
