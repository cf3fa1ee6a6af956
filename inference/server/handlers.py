"""Answering request lines: `RequestHandlers`, the request side of `EngineServer` (app.py).

Each connection's lines are read in `_handle`; every line gets its events or one error event, whatever
goes wrong (`_answer`); `_serve` routes a checked request to its op. A generate request is rendered to
prompt ids in a worker thread and queued on the engine loop, tracked until its last event (app.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from inference import protocol as P
from inference.server.connection import Connection
from inference.server.prompt import generate_prompt, tokenize_ids
from inference.tokenizer import StreamDecoder

log = logging.getLogger("inference.server")
BIG_LINE = 64 << 10  # request lines at least this long are parsed in a worker thread, off the event loop


@dataclass
class Tracked:
    """One in-flight generate request: the engine's id, the client's id, its connection and decoder."""

    rid: str
    client_id: object
    conn: Connection
    decoder: object
    prompt_tokens: int
    dropped_messages: int = 0  # oldest turns left out to fit the context ("history": "trim")
    completion_tokens: int = 0
    t0: float = field(default_factory=time.monotonic)
    t_first: float | None = None


class RequestHandlers:
    """The request side of `EngineServer` (app.py), whose state it uses: `status`, `progress`, `info`,
    `started`, `requests`, `connections`, `send_limit`, `loop`, `tokenizer`, `vocab_size`, `max_model_len`,
    the id counters `_conn_numbers` and `_rids`, and its `_cancel_all` and `request_stop`."""

    # -- connections ---------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._conn_numbers), reader, writer, self.send_limit)
        self.connections.add(conn)
        try:
            async for line in conn.lines():
                if line is None:
                    conn.send(P.error_event(None, f"request line longer than {P.MAX_LINE_BYTES} bytes; "
                                                  "it was skipped", P.LINE_TOO_LONG))
                    continue
                await self._answer(conn, line)
        finally:
            self.connections.discard(conn)
            if self.loop is not None and conn.active:
                log.info("connection %d closed: cancelling %d request(s)", conn.number, len(conn.active))
            if self.loop is not None:
                self._cancel_all(conn, None)
            await conn.flush_and_close(0.5)

    async def _answer(self, conn: Connection, line: bytes) -> None:
        """Serve one request line: every line gets its events or one error event, whatever goes wrong."""
        req = None
        try:
            req = _parse(line) if len(line) < BIG_LINE else await asyncio.to_thread(_parse, line)
            await self._serve(conn, req)
        except P.ProtocolError as e:
            conn.send(P.error_event(e.request_id, e.message, e.code))
        except Exception as e:  # a bug: answer the line, log it, and keep serving this connection
            log.exception("connection %d: a request failed", conn.number)
            conn.send(P.error_event(getattr(req, "id", None), internal_error(e), P.INTERNAL_ERROR))

    async def _serve(self, conn: Connection, req: P.Request) -> None:
        if isinstance(req, P.GenerateRequest):
            await self._generate(conn, req)
        elif isinstance(req, P.CancelRequest):
            rid = conn.active.get(req.id)
            targets = [rid] if rid is not None else [t.rid for t in self.requests.values() if t.client_id == req.id]
            for rid in targets:  # not on this connection: the same id on others (one user, unique ids)
                self.loop.abort(rid)
        elif isinstance(req, P.TokenizeRequest):
            self._require_ready(req.id)
            ids = await asyncio.to_thread(tokenize_ids, self.tokenizer, req, self.vocab_size)
            conn.send(P.result_event(req.id, "tokenize", {"token_ids": ids}))
        elif req.op == "health":
            conn.send(P.result_event(req.id, "health", self.health()))
        elif req.op == "stats":
            self._stats(conn, req.id)
        elif req.op == "shutdown":
            conn.send(P.result_event(req.id, "shutdown", {"status": "stopping"}))
            self.request_stop(f"shutdown requested by connection {conn.number}")

    def _require_ready(self, rid) -> None:
        if self.status == "ready":
            return
        if self.status == "loading":
            p = self.progress
            raise P.ProtocolError(f"the engine is still loading the model ({p['what']} {p['done']}/{p['total']}); "
                                  "wait until health reports status ready", P.NOT_READY, rid)
        raise P.ProtocolError(f"the engine server is {self.status}; start a new one", P.SHUTTING_DOWN, rid)

    async def _generate(self, conn: Connection, req: P.GenerateRequest) -> None:
        self._require_ready(req.id)
        if req.id in conn.active:
            raise P.ProtocolError(f"request id {req.id!r} is already streaming on this connection; "
                                  "use a new id per request", P.DUPLICATE_ID, req.id)
        # rendering (and trimming) a long conversation runs in a worker thread: other connections go on
        ids, dropped = await asyncio.to_thread(generate_prompt, self.tokenizer, req, self.vocab_size,
                                               self.max_model_len)
        self._require_ready(req.id)  # the server may have begun stopping meanwhile
        rid = f"c{conn.number}-{next(self._rids)}"
        self.requests[rid] = Tracked(rid, req.id, conn, StreamDecoder(self.tokenizer), len(ids), dropped)
        conn.active[req.id] = rid
        self.loop.add(rid, ids, req.sampling_params())

    def _stats(self, conn: Connection, rid) -> None:
        base = {"status": self.status, "connections": len(self.connections), "requests": len(self.requests)}
        if self.status != "ready":
            conn.send(P.result_event(rid, "stats", base))
            return

        def reply(result):
            if isinstance(result, Exception):
                conn.send(P.error_event(rid, f"stats failed: {result}", P.ENGINE_ERROR))
            else:
                conn.send(P.result_event(rid, "stats", {**result, **base}))

        self.loop.stats(reply)

    def health(self) -> dict:
        return {"status": self.status, **self.info, "progress": dict(self.progress),
                "protocol": P.PROTOCOL_VERSION, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1), "max_model_len": self.max_model_len}


def _parse(line: bytes) -> P.Request:
    return P.parse_request(P.decode_line(line))


def internal_error(e: Exception) -> str:
    return (f"the server failed on this request ({type(e).__name__}: {str(e)[:200]}); it was logged; "
            "the connection stays usable")
