"""`qwen-chat generate --connect`: the same command through the background engine server (no torch here).

Uses the server for the model (its default socket, or --socket) or starts one, then streams the reply
exactly as local `generate` prints it: text as it comes, or one JSON object as the last line (--json).
"""

from __future__ import annotations

import argparse
import json
import sys

from inference.config import SamplingParams
from inference.errors import UserError

ENGINE_FLAGS_FOR_SERVE = ("block_size", "num_kv_blocks", "gpu_memory_utilization", "cpu_kv_cache_gb", "max_num_seqs",
                          "max_num_batched_tokens", "max_model_len", "no_prefix_caching", "no_cuda_graphs",
                          "kv_disk_dir", "no_kv_disk", "kv_disk_max_gb")
REFUSED = ("bad_request", "prompt_too_long")  # the request itself was wrong: exit 2 like local generate
USAGE_KEYS = ("prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms", "decode_tok_s")


def serve_args(a: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The engine flags given on this command line that differ from their defaults, for a new server."""
    out = []
    for action in parser._actions:
        if action.dest in ENGINE_FLAGS_FOR_SERVE and getattr(a, action.dest) != action.default:
            value = getattr(a, action.dest)
            out += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return out


def sampling_fields(a: argparse.Namespace, model_dir: str) -> dict:
    """The sampling fields local generate would use (generation_config.json, then the flags), validated."""
    from inference.entrypoints.generate import sampling  # torch-free; generate imports this lazily

    p: SamplingParams = sampling(a, model_dir)
    return {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty, "seed": p.seed, "ignore_eos": p.ignore_eos}


def _progress(done: int, total: int, what: str) -> None:
    tty = sys.stderr.isatty()
    text = f"[{done}/{total}] {what}" if total else what
    print(text, end="\r" if tty and total and done < total else "\n", file=sys.stderr, flush=True)


def run_remote(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from inference.client import EngineClient
    from inference.client.launcher import EngineStartError, ensure_server
    from inference.entrypoints.generate import parse_ids
    from inference.model_path import resolve_model

    model_dir = str(resolve_model(a.model))
    given_ids = parse_ids(a.prompt_ids) if a.prompt_ids is not None else None
    sampling_fields(a, model_dir)  # bad flags fail before a server starts
    last = [None]

    def progress(done, total, what):
        if (done, total, what) != last[0] and not (total == 0 and what == "starting"):  # said just before
            last[0] = (done, total, what)
            _progress(done, total, what)

    try:
        path = ensure_server(a.model, tp=a.tp, dtype=a.dtype, device=a.device, quant=a.quant, socket=a.socket,
                             extra_args=serve_args(a, parser), progress=progress)
    except EngineStartError as e:
        raise UserError(f"{str(e).splitlines()[0]} (log: {e.log_file})") from None
    fields = sampling_fields(a, model_dir)  # again: `--model demo` is written by the server's first start
    with EngineClient(path) as c:
        health = c.health()
        if health.get("demo"):
            print("note: demo model (pipeline demo: random weights, its text is noise)", file=sys.stderr)
        if a.prompt is not None:
            req = {"prompt_ids": c.tokenize(text=a.prompt)}
        elif a.chat is not None:
            system = [{"role": "system", "content": a.system}] if a.system is not None else []
            req = {"messages": [*system, {"role": "user", "content": a.chat}]}
        else:
            req = {"prompt_ids": given_ids}
        ids, texts, done = [], [], None
        for ev in c.generate(**req, **fields):
            kind = ev.get("event")
            if kind == "token":
                ids += ev.get("token_ids") or []
                texts.append(ev.get("text") or "")
                if not a.json:
                    print(texts[-1], end="", flush=True)
            elif kind == "done":
                done = ev
            elif kind == "error":
                if not a.json and texts:
                    print()
                message = f"the engine server refused the request: {ev.get('message')}"
                if ev.get("code") in REFUSED:
                    raise UserError(message)
                print(f"error: {ev.get('message')} ({ev.get('code')})", file=sys.stderr)
                return 1
    if a.json:
        usage = done.get("usage") or {}
        print(json.dumps({"token_ids": ids, "text": "".join(texts), "finish_reason": done.get("finish_reason"),
                          "usage": {k: usage.get(k) for k in USAGE_KEYS}}, ensure_ascii=False))
    else:
        print()
    return 0
