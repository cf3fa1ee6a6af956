"""Soak test of the engine server: minutes of chat-shaped traffic, then the checks a release needs.

    python bench/soak.py                              # a GPU: random 7B weights, float32, 5 minutes, 24 clients
    python bench/soak.py --model demo --device cpu --duration 20 --clients 4        # small, on a CPU

Starts a server (private socket, KV disk tier in a temporary folder). Each client holds a multi-turn chat
(greedy; the history sent back as token ids with `"history": "trim"`, so chats grow to max_model_len and
are trimmed), with short messages and pastes of `--paste-tokens`, and now and then cancels a reply or drops
its connection mid-stream. Halfway, a burst of long prompts asks for more KV blocks than the cache holds.
It ends with: no error event and the server still ready (no traceback in its log), the KV cache back to
idle (0 blocks in use), and a sample of the complete greedy replies equal to the same request run alone
afterwards. Prints p50/p99 first-token (TTFT) and inter-token (ITL) latency; exit status 1 on a failed check.
Greedy equality needs float32 (the default): in float16 rounding depends on the batch's shape.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from inference.client import AsyncEngineClient, EngineClient
from inference.client.launcher import probe

KINDS = ("chat", "paste", "burst")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def span(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    return float(lo), float(hi or lo)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random-7b", help="random-7b|random-14b|random-72b (random weights), "
                                                          "or a checkpoint, alias or demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--max-model-len", type=int, default=None, help="default: 16384 (GPU), 4096 (CPU)")
    ap.add_argument("--num-kv-blocks", type=int, default=None, help="default: from memory (GPU); "
                                                                    "4 x max_model_len of tokens (CPU)")
    ap.add_argument("--paste-tokens", default="2000:8000", help="MIN:MAX tokens of a paste (at most half the context)")
    ap.add_argument("--paste-frac", type=float, default=0.2)
    ap.add_argument("--new-tokens", default="16:128", help="MIN:MAX new tokens of a reply")
    ap.add_argument("--cancel-frac", type=float, default=0.1)
    ap.add_argument("--drop-frac", type=float, default=0.1)
    ap.add_argument("--think", default="0.2:2", help="MIN:MAX seconds between a client's turns")
    ap.add_argument("--check", type=int, default=12, help="complete replies rerun alone after the load")
    ap.add_argument("--no-kv-disk", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.clients < 1 or a.duration <= 0:
        ap.error("--clients and --duration must be positive")
    return a


class Soak:
    def __init__(self, a, path: Path, health: dict, stats: dict):
        self.a, self.path = a, path
        self.max_len = health["max_model_len"]
        self.capacity = stats["kv_blocks_total"] * stats["block_size"]
        hi = min(span(a.paste_tokens)[1], self.max_len // 2)
        self.paste = (min(span(a.paste_tokens)[0], hi), hi)
        self.deadline = time.monotonic() + a.duration
        self.ttft = {k: [] for k in KINDS}
        self.itl = {k: [] for k in KINDS}
        self.done: list[tuple[dict, list[int]]] = []  # (request, greedy reply) of complete replies
        self.errors: list[dict] = []
        self.counts = {"stop": 0, "length": 0, "cancelled": 0, "dropped": 0, "error": 0}

    async def stream(self, c, req: dict, kind: str, action: str, stop_after: int) -> list[int]:
        rid, toks, first, last = uuid.uuid4().hex, [], None, None
        t0 = time.perf_counter()
        async for ev in c.generate(**req, temperature=0.0, repetition_penalty=1.0, request_id=rid):
            now = time.perf_counter()
            if ev["event"] == "token" and ev["token_ids"]:
                ids = ev["token_ids"]
                if first is None:
                    first = now
                    self.ttft[kind].append(now - t0)
                else:
                    self.itl[kind].extend([(now - last) / len(ids)] * len(ids))
                last = now
                toks += ids
                if action == "cancel" and len(toks) >= stop_after:
                    await c.cancel(rid)
                    action = "cancelled"
                elif action == "drop" and len(toks) >= stop_after:
                    await c.close()  # no cancel: the server must notice the dropped connection
                    self.counts["dropped"] += 1
                    return toks
            elif ev["event"] == "done":
                self.counts[ev["finish_reason"]] += 1
                if ev["finish_reason"] in ("stop", "length"):
                    self.done.append((req, toks))
            elif ev["event"] == "error":
                self.counts["error"] += 1
                self.errors.append(ev)
        return toks

    async def chat(self, i: int) -> None:
        a = self.a
        rng = random.Random(a.seed * 1000 + i)
        c, history = None, []
        while time.monotonic() < self.deadline:
            if c is None:
                c = await AsyncEngineClient.open(self.path, timeout=60, stall_timeout=600)
            paste = rng.random() < a.paste_frac
            n_user = rng.randint(*map(int, self.paste)) if paste else rng.randint(8, 64)
            user = {"role": "user", "content": "", "token_ids": [rng.randrange(1000, 100000) for _ in range(n_user)]}
            msgs = history + [user]
            r = rng.random()
            action = "cancel" if r < a.cancel_frac else "drop" if r < a.cancel_frac + a.drop_frac else "full"
            lo, hi = map(int, span(a.new_tokens))
            req = {"messages": msgs, "max_new_tokens": rng.randint(lo, hi), "history": "trim"}
            reply = await self.stream(c, req, "paste" if paste else "chat", action, rng.randint(1, max(1, lo // 2)))
            if action == "drop":
                c = None
            history = msgs + [{"role": "assistant", "content": "", "token_ids": reply}]
            while sum(len(m["token_ids"]) for m in history) > 2 * self.max_len:  # the client keeps a window too
                history = history[2:]
            await asyncio.sleep(rng.uniform(*span(a.think)))
        if c is not None:
            await c.close()

    async def burst(self) -> None:
        """Long prompts at once, together more tokens than the KV cache holds (preemption, waiting)."""
        await asyncio.sleep(self.a.duration / 2)
        rng = random.Random(self.a.seed + 7)
        plen = min(self.max_len // 2, max(256, self.capacity // 8))
        count = min(64, math.ceil(1.25 * self.capacity / (plen + 16)))
        print(f"burst: {count} prompts of {plen} tokens against a cache of {self.capacity} tokens", flush=True)

        async def one():
            async with AsyncEngineClient(self.path, timeout=60, stall_timeout=600) as c:
                req = {"prompt_ids": [rng.randrange(1000, 100000) for _ in range(plen)], "max_new_tokens": 16}
                await self.stream(c, req, "burst", "full", 0)

        await asyncio.gather(*(one() for _ in range(count)))

    async def run(self) -> None:
        await asyncio.gather(self.burst(), *(self.chat(i) for i in range(self.a.clients)))


def wait_idle(path: Path, timeout: float = 60.0) -> dict:
    with EngineClient(path) as c:
        deadline = time.monotonic() + timeout
        while True:  # dropped connections are noticed asynchronously
            s = c.stats()
            if (s["running"] == 0 and s["waiting"] == 0 and s["kv_blocks_used"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.1)


TIE = 1e-3  # log-probability gap under which two tokens are a tie that rounding may break either way


def solo_mismatches(path: Path, sample) -> tuple[list[str], int]:
    """Each sampled request run again alone: its greedy reply must be the one it got under load. A batch of
    another shape rounds differently (also in float32), so a reply may take the other side of a tie; such a
    reply counts as equal when, where it first differs, the token it took under load is within TIE of the best
    one alone (the log-probabilities come with the solo run). Returns the mismatches and the ties broken."""
    bad, ties = [], 0
    with EngineClient(path, timeout=600) as c:
        for req, want in sample:
            got, lps = [], []
            for ev in c.generate(**req, temperature=0.0, repetition_penalty=1.0, logprobs=2):
                if ev["event"] == "token":
                    got += ev["token_ids"]
                elif ev["event"] == "logprobs" and ev.get("token"):
                    lps += ev["token"]
            if got == want:
                continue
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            alts = dict(map(tuple, lps[at][1])) if at < min(len(got), len(want), len(lps)) else {}
            gap = alts[got[at]] - alts[want[at]] if want[at] in alts and got[at] in alts else None
            if gap is not None and gap <= TIE:
                ties += 1
            else:
                bad.append(f"{len(want)}-token reply differs alone from token {at} on (log-probability gap "
                           f"{'not in the top 2' if gap is None else f'{gap:.2e}'})")
    return bad, ties


def start_server(a, tmp: Path) -> tuple[subprocess.Popen, Path, Path]:
    sock, log = tmp / "soak.sock", tmp / "server.log"
    max_len = a.max_model_len or (4096 if a.device == "cpu" else 16384)
    flags = ["--device", a.device, "--dtype", a.dtype, "--socket", str(sock), "--max-model-len", str(max_len)]
    blocks = a.num_kv_blocks or (4 * max_len // 16 if a.device == "cpu" else None)
    flags += ["--num-kv-blocks", str(blocks)] if blocks else []
    flags += ["--no-kv-disk"] if a.no_kv_disk else ["--kv-disk-dir", str(tmp / "kv")]
    if a.model.startswith("random-"):
        from inference.entrypoints.bench_shapes import SHAPES  # torch: only where weights are drawn
        from inference.models.demo import write_checkpoint

        model = write_checkpoint(tmp / a.model, with_weights=False, **SHAPES[a.model.removeprefix("random-")])
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve-random", "--model", str(model), *flags]
    else:
        cmd = [sys.executable, "-m", "inference", "serve", "--model", a.model, *flags]
    env = dict(os.environ)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        health = probe(sock, timeout=2.0) if sock.exists() else None
        if health and health["status"] == "ready":
            return proc, sock, log
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server was not ready in 900 s:\n{log.read_text()[-3000:]}")


def serve_random(argv) -> int:
    """The server process of a random-* model: `serve` with random weights drawn on the device."""
    import inference.entrypoints.cli_args as cli_args
    from inference.server.serve import main as serve_main

    plain = cli_args.engine_config_from_args

    def with_random_weights(args):
        cfg = plain(args)
        cfg.extra["random_weights"] = True
        return cfg

    cli_args.engine_config_from_args = with_random_weights  # serve.main looks it up when called
    return serve_main(argv)


def report(soak: Soak, stats: dict, mismatches: list[str], ties: int, checked: int, health: dict, alive: bool,
           log: Path) -> bool:
    a, ms = soak.a, lambda x: f"{x * 1e3:.1f}"
    print(f"\nsoak: {health['model_id']} on {health['device']} ({health['dtype']}), {a.clients} clients for "
          f"{a.duration:.0f} s, max_model_len {soak.max_len}, KV cache {soak.capacity} tokens")
    print("| requests | count | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |")
    print("|---|---|---|---|---|---|")
    for k in (*KINDS, "all"):
        t = soak.ttft[k] if k != "all" else [x for v in soak.ttft.values() for x in v]
        i = soak.itl[k] if k != "all" else [x for v in soak.itl.values() for x in v]
        print(f"| {k} | {len(t)} | {ms(pct(t, 50))} | {ms(pct(t, 99))} | {ms(pct(i, 50))} | {ms(pct(i, 99))} |")
    c = soak.counts
    print(f"finished stop/length {c['stop']}/{c['length']}, cancelled {c['cancelled']}, dropped {c['dropped']}, "
          f"errors {c['error']}; preemptions {stats.get('preemptions')}")
    tracebacks = log.read_text(errors="replace").count("Traceback")
    leaked = stats["kv_blocks_used"] + stats["running"] + stats["waiting"]
    print(f"engine errors: {len(soak.errors)} error events, server alive: {alive}, tracebacks in its log: {tracebacks}")
    print(f"leaked KV blocks: {stats['kv_blocks_used']} (running {stats['running']}, waiting {stats['waiting']})")
    print(f"greedy replies equal to the same request alone: {checked - len(mismatches)}/{checked} "
          f"({ties} of them took the other side of a tie, log-probabilities within {TIE})")
    for e in soak.errors[:5]:
        print(f"  error event: {e}")
    for m in mismatches[:5]:
        print(f"  {m}")
    ok = not soak.errors and alive and not tracebacks and not leaked and not mismatches and checked > 0
    print("soak: PASS" if ok else "soak: FAIL")
    return ok


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve-random"]:
        return serve_random(argv[1:])
    a = parse_args(argv)
    ok = False
    tmp = Path(tempfile.mkdtemp(prefix="qwen-soak-"))
    proc, sock, log = start_server(a, tmp)
    try:
        health = probe(sock)
        with EngineClient(sock) as c:
            soak = Soak(a, sock, health, c.stats())
        print(f"server ready ({health['device']}, {health['dtype']}); {a.clients} clients for {a.duration:.0f} s",
              flush=True)
        asyncio.run(soak.run())
        stats = wait_idle(sock)
        sample = random.Random(a.seed).sample(soak.done, min(a.check, len(soak.done)))
        sample += [d for d in soak.done if "prompt_ids" in d[0]][:2]  # burst requests too
        mismatches, ties = solo_mismatches(sock, sample)
        alive = proc.poll() is None and (probe(sock) or {}).get("status") == "ready"
        ok = report(soak, stats, mismatches, ties, len(sample), health, alive, log)
        if not ok:
            print(f"server log tail ({log}):\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
    finally:
        try:
            with EngineClient(sock) as c:
                c.shutdown()
            proc.wait(60)
        except Exception:  # already gone, or not stopping: end it
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
