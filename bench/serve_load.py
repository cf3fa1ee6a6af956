"""Load test of the engine server: N concurrent clients with random cancels and disconnects.

    python bench/serve_load.py                       # demo model on CPU, 32 clients
    python bench/serve_load.py --socket PATH         # against a running server

Starts a server (unless --socket names a live one), measures one client alone, then N clients at
once (each on its own connection, each with its own random prompt): some cancel mid-stream, some
drop the connection mid-stream. Prints aggregate tok/s, p50/p99 inter-token latency (ITL) of
both phases, and the KV blocks still in use afterwards (leaked blocks; must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from inference.client import AsyncEngineClient, EngineClient
from inference.client.launcher import ensure_server, probe


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def one_client(path, prompt, n, action, stop_after, itl: list, counts: dict) -> int:
    """Stream one request; `action` is full | cancel | disconnect (after `stop_after` tokens)."""
    c = AsyncEngineClient(path, timeout=60, stall_timeout=120)
    await c.connect()
    got, last = 0, None
    rid = f"r{random.getrandbits(48):x}"
    try:
        async for ev in c.generate(prompt_ids=prompt, max_new_tokens=n, ignore_eos=True, request_id=rid):
            now = time.perf_counter()
            if ev["event"] == "token" and ev["token_ids"]:
                if last is not None:
                    itl.extend([(now - last) / len(ev["token_ids"])] * len(ev["token_ids"]))
                last = now
                got += len(ev["token_ids"])
                if action == "cancel" and got >= stop_after:
                    await c.cancel(rid)
                    action = "cancelled"
                elif action == "disconnect" and got >= stop_after:
                    await c.close()  # drop the connection without a cancel: the server must notice
                    counts["disconnected"] += 1
                    return got
            elif ev["event"] == "done":
                counts[ev["finish_reason"]] = counts.get(ev["finish_reason"], 0) + 1
            elif ev["event"] == "error":
                counts["error"] += 1
                print(f"error event: {ev}", file=sys.stderr)
    finally:
        await c.close()
    return got


async def phase(path, prompts, n, actions, rng) -> dict:
    itl: list[float] = []
    counts = {"length": 0, "cancelled": 0, "disconnected": 0, "error": 0}
    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one_client(path, p, n, a, rng.randint(2, n // 2), itl, counts)
                                    for p, a in zip(prompts, actions)))
    wall = time.perf_counter() - t0
    return {"tokens": sum(tokens), "wall": wall, "tok_s": sum(tokens) / wall, "itl": itl, "counts": counts}


def add_load_args(ap: argparse.ArgumentParser, clients: int, max_new_tokens: int, prompt_len: int) -> None:
    """The options every load benchmark shares: which server (started here unless --socket answers), how much load."""
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--socket", help="use the server on this socket (started here if none answers)")
    ap.add_argument("--clients", type=int, default=clients)
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--prompt-len", type=int, default=prompt_len)
    ap.add_argument("--seed", type=int, default=0)


def leaked_blocks(path, timeout: float = 10.0) -> dict:
    with EngineClient(path) as c:
        deadline = time.monotonic() + timeout
        while True:  # disconnects are noticed asynchronously: give the server a moment
            s = c.stats()
            if (s["running"] == 0 and s["waiting"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    add_load_args(ap, clients=32, max_new_tokens=64, prompt_len=48)
    ap.add_argument("--cancel-frac", type=float, default=0.25)
    ap.add_argument("--disconnect-frac", type=float, default=0.25)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = None
    if args.socket and probe(args.socket):
        path, started = Path(args.socket), False
    else:
        tmp = tempfile.mkdtemp(prefix="serve-load-")
        sock = args.socket or Path(tmp) / "bench.sock"
        t0 = time.perf_counter()
        path = ensure_server(args.model, device=args.device, dtype=args.dtype, socket=sock, timeout=600)
        started = True
        print(f"started a server on {path} in {time.perf_counter() - t0:.1f}s (log {Path(path).with_suffix('.log')})")
    health = probe(path)
    prompts = [[rng.randrange(1000, 100000) for _ in range(args.prompt_len)] for _ in range(args.clients + 2)]
    asyncio.run(phase(path, prompts[:1], 8, ["full"], rng))  # warm-up
    solo = asyncio.run(phase(path, prompts[1:2], args.max_new_tokens, ["full"], rng))
    k_cancel = int(args.clients * args.cancel_frac)
    k_drop = int(args.clients * args.disconnect_frac)
    actions = ["cancel"] * k_cancel + ["disconnect"] * k_drop + ["full"] * (args.clients - k_cancel - k_drop)
    rng.shuffle(actions)
    load = asyncio.run(phase(path, prompts[2:], args.max_new_tokens, actions, rng))
    stats = leaked_blocks(path)
    if started:
        with EngineClient(path) as c:
            c.shutdown()

    def row(name, a, b):
        print(f"| {name:<36} | {a:>14} | {b:>14} |")

    print(f"\nserve_load: model {health['model_id']} on {health['device']} ({health['dtype']}, tp {health['tp']}), "
          f"{args.max_new_tokens} new tokens per request, prompts of {args.prompt_len} tokens")
    row("", "1 client", f"{args.clients} clients")
    print(f"|{'-' * 38}|{'-' * 16}|{'-' * 16}|")
    row("aggregate tok/s", f"{solo['tok_s']:.1f}", f"{load['tok_s']:.1f}")
    row("inter-token latency p50 (ms)", f"{pct(solo['itl'], 50) * 1e3:.1f}", f"{pct(load['itl'], 50) * 1e3:.1f}")
    row("inter-token latency p99 (ms)", f"{pct(solo['itl'], 99) * 1e3:.1f}", f"{pct(load['itl'], 99) * 1e3:.1f}")
    row("tokens streamed", solo["tokens"], load["tokens"])
    c = load["counts"]
    row("requests full/cancelled/dropped/err", "1/0/0/0",
        f"{c['length']}/{c['cancelled']}/{c['disconnected']}/{c['error']}")
    row("leaked KV blocks (used after)", "", stats["kv_blocks_used"])
    row("running/waiting after", "", f"{stats['running']}/{stats['waiting']}")
    print(f"(mean ITL {statistics.fmean(load['itl']) * 1e3:.1f} ms under load; wall {load['wall']:.1f}s)")
    ok = stats["kv_blocks_used"] == 0 and stats["running"] == 0 and c["error"] == 0
    if not ok:
        print("FAIL: blocks leaked, requests left running, or error events", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
