"""The asyncio side of the engine server: lifecycle, the engine thread's callbacks, detokenizing.

Rank 0 binds the socket BEFORE loading the model, so `health` answers "loading" with progress while
weights load in the engine thread (engine_loop.py). Request lines are answered by `RequestHandlers`
(handlers.py); one `Tracked` per in-flight generate request maps the engine's request id to its
connection and the client's id, and holds its StreamDecoder, until its last event goes out here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time

from inference import protocol as P
from inference.config import EngineConfig
from inference.model_path import is_demo
from inference.server.connection import Connection
from inference.server.engine_loop import EngineLoop, Output
from inference.server.handlers import RequestHandlers, Tracked, internal_error

log = logging.getLogger("inference.server")
EXIT_TIMEOUT = 20.0  # seconds to wait for the engine thread at shutdown before exiting anyway


class EngineServer(RequestHandlers):
    def __init__(self, cfg: EngineConfig, info: dict, listen_sock, make_engine, send_limit: int):
        self.cfg = cfg
        self.info = info  # model, model_id, tp, quant, demo, socket, log_file, ...
        self.listen_sock = listen_sock
        self.make_engine = make_engine
        self.send_limit = send_limit
        self.status = "loading"
        self.progress = {"done": 0, "total": 0, "what": "starting"}
        self.started = time.time()
        self.engine = None
        self.tokenizer = None
        self.vocab_size = None
        self.max_model_len = None
        self.requests: dict[str, Tracked] = {}
        self.connections: set[Connection] = set()
        self.exit_code = 0
        self._conn_numbers = itertools.count(1)
        self._rids = itertools.count(1)
        self._stop = asyncio.Event()
        self._engine_gone = asyncio.Event()
        self.loop: EngineLoop | None = None
        self.http = None  # the OpenAI-compatible HTTP front (http.py), when serve --http made one

    # -- lifecycle -----------------------------------------------------------------------------------
    async def run(self) -> int:
        aio = asyncio.get_running_loop()
        server = await asyncio.start_unix_server(self._handle, sock=self.listen_sock,
                                                 limit=P.MAX_LINE_BYTES + 2)
        if self.http is not None:
            await self.http.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            aio.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
        self.loop = EngineLoop(self.make_engine, aio.call_soon_threadsafe, self._on_progress, self._on_ready,
                               self._on_outputs, self._on_crash, self._engine_gone.set)
        self.loop.start()
        log.info("listening on %s (pid %d); loading %s", self.info["socket"], os.getpid(), self.info["model"])
        await self._stop.wait()
        failed, self.status = self.status == "failed", "stopping"
        server.close()
        try:  # gone from the path at once; the lock stays held until the process exits
            os.unlink(self.info["socket"])
        except OSError:
            pass
        for t in list(self.requests.values()):
            t.conn.send(P.error_event(t.client_id, "the engine server is shutting down; the reply was cut off",
                                      P.SHUTTING_DOWN))
            self._untrack(t)
        self.loop.stop()
        await asyncio.gather(*(c.flush_and_close(2.0) for c in list(self.connections)),
                             *([self.http.stop(2.0)] if self.http is not None else []))
        if self.engine is None and not failed:  # stopped while loading: nothing to wind down
            log.info("stopped while loading the model")
            return self.exit_code
        try:
            await asyncio.wait_for(self._engine_gone.wait(), EXIT_TIMEOUT)
        except asyncio.TimeoutError:
            log.error("the engine thread did not finish within %.0fs; exiting anyway", EXIT_TIMEOUT)
            self.exit_code = self.exit_code or 1
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code

    def request_stop(self, why: str = "") -> None:
        if not self._stop.is_set():
            log.info("shutting down%s", f" ({why})" if why else "")
            self._stop.set()

    # -- engine thread callbacks (run on the asyncio loop) ------------------------------------------
    def _on_progress(self, done, total, what) -> None:
        self.progress = {"done": int(done), "total": int(total), "what": str(what)}

    def _on_ready(self, engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.vocab_size = engine.model_config.vocab_size
        self.max_model_len = engine.max_model_len
        self.info["demo"] = is_demo(self.cfg.model)  # `--model demo` is built during loading
        for key in ("device", "dtype"):
            value = getattr(engine, key, None)
            if value is not None:
                self.info[key] = str(value).replace("torch.", "")
        self.info["quant"] = self.cfg.quant or getattr(engine.model_config, "quantize", None)  # a quantized checkpoint
        if self.status == "loading":
            self.status = "ready"
            self.progress = {**self.progress, "what": "ready"}
            log.info("ready: %s on %s (%s), max_model_len %s", self.info["model_id"], self.info.get("device"),
                     self.info.get("dtype"), self.max_model_len)

    def _on_crash(self, message: str, tb: str) -> None:
        if tb:  # without one (bad input at load) `serve` prints the one `error:` line itself
            log.error("%s\n%s", message, tb)
        self.status = "failed"
        self.exit_code = 1 if tb else 2  # 2: bad input, re-raised by serve.main as one `error:` line
        msg = f"{message}; the engine server is exiting (log: {self.info.get('log_file') or 'its stderr'})"
        for t in list(self.requests.values()):
            t.conn.send(P.error_event(t.client_id, msg, P.ENGINE_ERROR))
            self._untrack(t)
        for c in self.connections:
            c.send(P.error_event(None, msg, P.ENGINE_ERROR))
        self.request_stop("engine failure")

    def _on_outputs(self, outs: list[Output]) -> None:
        for o in outs:
            t = self.requests.get(o.request_id)
            if t is None:
                continue  # its connection went away, or it was already failed
            try:
                if o.error is not None:
                    t.conn.send(P.error_event(t.client_id, o.error, o.error_code))
                    self._untrack(t)
                    continue
                if o.logprobs is not None or o.prompt_logprobs is not None:  # only requests asking for logprobs
                    t.conn.send({"id": t.client_id, "event": "logprobs", "token": o.logprobs,
                                 "prompt": o.prompt_logprobs})
                if o.token_ids:
                    t.t_first = t.t_first or time.monotonic()
                    t.completion_tokens += len(o.token_ids)
                    if not t.conn.send(P.token_event(t.client_id, o.token_ids, t.decoder.push(o.token_ids)),
                                       control=False):
                        self._overloaded(t.conn)
                        continue
                if o.finished:
                    rest = t.decoder.flush()
                    if rest:
                        t.conn.send(P.token_event(t.client_id, [], rest))
                    t.conn.send(P.done_event(t.client_id, o.finish_reason or "stop", self._usage(t, o.usage)))
                    self._untrack(t)
            except Exception as e:  # a failure serving one request never costs another its output
                log.exception("request %s of connection %d failed; cancelled", t.rid, t.conn.number)
                self._untrack(t)
                self.loop.abort(t.rid)
                t.conn.send(P.error_event(t.client_id, internal_error(e), P.INTERNAL_ERROR))

    def _usage(self, t: Tracked, usage: dict | None) -> dict:
        extra = {"dropped_messages": t.dropped_messages} if t.dropped_messages else {}
        if usage and usage.get("prompt_tokens") is not None:
            return {**usage, **extra}
        now = time.monotonic()
        ttft = None if t.t_first is None else round((t.t_first - t.t0) * 1000, 1)
        decode = (t.completion_tokens - 1) / (now - t.t_first) if t.t_first and now > t.t_first else None
        return {"prompt_tokens": t.prompt_tokens, "cached_tokens": None, "completion_tokens": t.completion_tokens,
                "ttft_ms": ttft, "decode_tok_s": None if decode is None else round(decode, 1), **extra}

    def _untrack(self, t: Tracked) -> None:
        self.requests.pop(t.rid, None)
        if t.conn.active.get(t.client_id) == t.rid:
            del t.conn.active[t.client_id]

    def _cancel_all(self, conn: Connection, code: str | None, message: str = "") -> None:
        for client_id, rid in list(conn.active.items()):
            t = self.requests.get(rid)
            if t is not None:
                if code is not None:
                    conn.send(P.error_event(client_id, message, code))
                self._untrack(t)
            self.loop.abort(rid)
        conn.active.clear()

    def _overloaded(self, conn: Connection) -> None:
        log.warning("connection %d reads too slowly (%d bytes unsent): cancelling its requests",
                    conn.number, conn.buffered())
        self._cancel_all(conn, P.OVERLOADED,
                         f"the client did not read events fast enough ({conn.buffered()} bytes unsent, "
                         f"limit {self.send_limit}): request cancelled; read the stream as it comes")
