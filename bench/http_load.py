"""Throughput through the OpenAI HTTP front beside the Unix socket, on one server (one engine).

    python bench/http_load.py                                   # demo model on CPU, 16 clients
    python bench/http_load.py --model 14b-chat --device cuda --dtype bfloat16 --clients 16 --rounds 3
    python bench/http_load.py --socket PATH --url http://127.0.0.1:8000 [--api-key KEY]   # running server

Starts `serve --http 0` (unless --socket names a live server, whose health gives the URL), then runs
rounds of: N socket clients at once, then N HTTP streaming clients at once (POST /v1/completions,
stream, token-id prompts, ignore_eos, greedy), each with a fresh random prompt so neither front gets
prefix-cache hits the other did not. Both fronts' connections are opened before the clock starts, and
both time the first token that has text (the HTTP front sends no chunk for a token whose text is held
back, e.g. half a UTF-8 character). Prints, per front, the median over rounds of the aggregate tok/s,
TTFT / inter-token latency percentiles and (server on this machine) the CPU time of the server's event-loop
thread per token: the front's own cost, which the engine thread competes with for the GIL. The HTTP
front should cost at most a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from serve_load import add_load_args, pct  # bench/ is on sys.path when run as a script

from inference.client import AsyncEngineClient, EngineClient
from inference.client.launcher import ensure_server, probe


async def socket_client(c, prompt, n, rec) -> int:
    t0, last, got, held = time.perf_counter(), None, 0, 0
    async for ev in c.generate(prompt_ids=prompt, max_new_tokens=n, ignore_eos=True, temperature=0):
        if ev["event"] == "token" and ev["token_ids"]:
            got += len(ev["token_ids"])
            held += len(ev["token_ids"])
            if ev["text"]:  # what HTTP can see: its front sends a chunk only for tokens with text
                last, held = rec(t0, last, held), 0
        elif ev["event"] == "error":
            raise RuntimeError(f"socket error event: {ev}")
    return got


async def http_client(session, url, key, prompt, n, rec) -> int:
    body = {"prompt": prompt, "max_tokens": n, "stream": True, "temperature": 0, "ignore_eos": True,
            "repetition_penalty": 1.0,  # the socket's default; HTTP's comes from generation_config.json
            "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0, last, got = time.perf_counter(), None, 0
    async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                got = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                last = rec(t0, last, 1)
    return got


async def _health(session, url) -> None:
    async with session.get(url + "/health") as r:
        await r.read()


def loop_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of the server's main thread (its asyncio loop; the engine steps in another thread)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


async def phase(front: str, args, prompts, path, url, pid=None) -> dict:
    ttft: list[float] = []
    itl: list[float] = []

    def rec(t0, last, k):
        now = time.perf_counter()
        if last is None:
            ttft.append(now - t0)
        else:
            itl.extend([(now - last) / k] * k)
        return now

    # connections are opened before the clock starts, on both fronts: what is timed is the requests
    if front == "socket":
        async with contextlib.AsyncExitStack() as stack:
            cs = [await stack.enter_async_context(AsyncEngineClient(path, timeout=60, stall_timeout=300))
                  for _ in prompts]
            t0, cpu0 = time.perf_counter(), loop_cpu_s(pid)
            tokens = await asyncio.gather(*(socket_client(c, p, args.max_new_tokens, rec)
                                            for c, p in zip(cs, prompts)))
            wall, cpu1 = time.perf_counter() - t0, loop_cpu_s(pid)
    else:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
            await asyncio.gather(*(_health(s, url) for _ in prompts))  # one kept-alive connection per client
            t0, cpu0 = time.perf_counter(), loop_cpu_s(pid)
            tokens = await asyncio.gather(*(http_client(s, url, args.api_key, p, args.max_new_tokens, rec)
                                            for p in prompts))
            wall, cpu1 = time.perf_counter() - t0, loop_cpu_s(pid)
    cpu = (cpu1 - cpu0) / max(1, sum(tokens)) * 1e6 if cpu0 is not None and cpu1 is not None else float("nan")
    return {"tok_s": sum(tokens) / wall, "tokens": sum(tokens), "ttft": ttft, "itl": itl, "loop_us": cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    add_load_args(ap, clients=16, max_new_tokens=128, prompt_len=64)  # a server it starts gets --http 0
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--url", help="its HTTP base URL (default: from its health)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    started = False
    if args.socket and probe(args.socket):
        path = Path(args.socket)
    else:
        sock = args.socket or Path(tempfile.mkdtemp(prefix="http-load-")) / "bench.sock"
        t0 = time.perf_counter()
        path = ensure_server(args.model, tp=args.tp, device=args.device, dtype=args.dtype, socket=sock,
                             extra_args=["--http", "0"], timeout=1200)
        started = True
        print(f"started a server on {path} in {time.perf_counter() - t0:.1f}s")
    health = probe(path)
    while health is not None and health["status"] == "loading":  # a server started elsewhere, still loading
        time.sleep(1.0)
        health = probe(path)
    url = args.url or health.get("http")
    if not url:
        print("error: the server has no HTTP front: start it with --http or pass --url", file=sys.stderr)
        return 2

    def prompts(k):
        return [[rng.randrange(1000, 100000) for _ in range(args.prompt_len)] for _ in range(k)]

    try:
        for front in ("socket", "http"):  # warm-up: graphs, allocator, connections
            asyncio.run(phase(front, argparse.Namespace(**{**vars(args), "max_new_tokens": 8}), prompts(2),
                              path, url))
        runs = {"socket": [], "http": []}
        for _ in range(args.rounds):
            for front in runs:
                runs[front].append(asyncio.run(phase(front, args, prompts(args.clients), path, url,
                                                     health.get("pid"))))
    finally:
        if started:
            with EngineClient(path) as c:
                c.shutdown()

    def med(front, f):
        return statistics.median(f(r) for r in runs[front])

    print(f"\nhttp_load: model {health['model_id']} on {health['device']} ({health['dtype']}, tp {health['tp']}), "
          f"{args.clients} clients, {args.max_new_tokens} new tokens, prompts of {args.prompt_len}, "
          f"median of {args.rounds} rounds")
    print(f"| {'front':<8} | {'tok/s':>9} | {'TTFT p50 ms':>11} | {'ITL p50 ms':>10} | {'ITL p99 ms':>10} "
          f"| {'loop CPU us/tok':>15} |")
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 13}|{'-' * 12}|{'-' * 12}|{'-' * 17}|")
    for front in runs:
        print(f"| {front:<8} | {med(front, lambda r: r['tok_s']):>9.1f} "
              f"| {med(front, lambda r: pct(r['ttft'], 50)) * 1e3:>11.1f} "
              f"| {med(front, lambda r: pct(r['itl'], 50)) * 1e3:>10.2f} "
              f"| {med(front, lambda r: pct(r['itl'], 99)) * 1e3:>10.2f} "
              f"| {med(front, lambda r: r['loop_us']):>15.1f} |")
    ratio = med("http", lambda r: r["tok_s"]) / med("socket", lambda r: r["tok_s"])
    print(f"HTTP / socket aggregate throughput: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
