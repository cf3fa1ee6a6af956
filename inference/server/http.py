"""The OpenAI-compatible HTTP front (`serve --http`): aiohttp on the server's own event loop (docs/openai.md).

Each generation request becomes an `HttpStream`, which the server treats like a socket connection:
`EngineServer._generate` validates and queues it on the one engine (same scheduler, prefix cache and
disk tier as socket clients), and `_on_outputs` sends its events to the stream's queue. A client that
goes away cancels the handler (handler_cancellation), which aborts the request and frees its blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from inference import protocol as P
from inference.config import generation_defaults
from inference.server.openai_format import Reply, dumps
from inference.server.openai_schema import ApiError, parse, parse_body

log = logging.getLogger("inference.server")
MAX_BODY = 8 << 20
STATUS = {P.PROMPT_TOO_LONG: 400, P.NOT_READY: 503, P.SHUTTING_DOWN: 503, P.ENGINE_ERROR: 500,
          P.OVERLOADED: 503}
CODES = {P.PROMPT_TOO_LONG: "context_length_exceeded", P.NOT_READY: "model_loading"}


def _json(obj: dict, status: int = 200) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json")


def _event_error(ev: dict) -> ApiError:
    code = ev.get("code") or P.BAD_REQUEST
    return ApiError(STATUS.get(code, 400), ev.get("message") or code,
                    code=None if code == P.BAD_REQUEST else CODES.get(code, code))


class HttpStream:
    """One HTTP generation request, seen by the server as a connection that receives its events."""

    def __init__(self, number: int, send_limit: int):
        self.number = number
        self.active: dict[object, str] = {}  # answer id ("cmpl-<uuid>") -> engine request id, while it runs
        self.send_limit = send_limit
        self.closed = False
        self.queue: asyncio.Queue = asyncio.Queue()
        self._bytes = 0  # about how much is queued and not yet written to the client

    def send(self, event: dict, control: bool = True) -> bool:
        if self.closed or (not control and self._bytes > self.send_limit):
            return False
        self._bytes += 64 + len(event.get("text") or "") + 8 * len(event.get("token_ids") or ())
        self.queue.put_nowait(event)
        return True

    def buffered(self) -> int:
        return self._bytes

    async def events(self) -> list[dict]:
        """Every queued event (waits for the first)."""
        out = [await self.queue.get()]
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        self._bytes = 0
        return out


class HttpFront:
    def __init__(self, server, sock, api_key: str | None, url: str):
        self.server, self.sock, self.api_key, self.url = server, sock, api_key, url
        self.runner: web.AppRunner | None = None
        self.defaults: dict | None = None
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name:.+}", self.model)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        self.app = app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        log.info("OpenAI-compatible HTTP on %s%s", self.url, " (API key required)" if self.api_key else "")

    async def stop(self, timeout: float) -> None:
        if self.runner is not None:
            try:
                await asyncio.wait_for(self.runner.cleanup(), timeout + 1.0)
            except asyncio.TimeoutError:
                log.warning("HTTP requests still open at shutdown were dropped")

    # -- middleware: the key, and every error in the OpenAI shape ---------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            if self.api_key is not None and request.path.startswith("/v1/"):
                self._authorize(request)
            return await handler(request)
        except ApiError as e:
            return _json(e.body(), e.status)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            reason = e.reason if e.status != 413 else f"request body over {MAX_BODY} bytes"
            code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(e.status)
            return _json(ApiError(e.status, f"{reason}: {request.method} {request.path}"[:300], code=code).body(),
                         e.status)

    def _authorize(self, request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with", code="invalid_api_key")

    # -- simple routes ---------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        s = self.server
        body = {"status": s.status, "model": s.info["model_id"], "progress": dict(s.progress)}
        return _json(body, 200 if s.status == "ready" else 503)

    def _model_card(self) -> dict:
        return {"id": self.server.info["model_id"], "object": "model", "created": int(self.server.started),
                "owned_by": "qwen-chat", "max_model_len": self.server.max_model_len}

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        self._check_model(request.match_info["name"])
        return _json(self._model_card())

    def _check_model(self, name: str | None) -> None:
        info = self.server.info
        if name is not None and name not in (info["model_id"], info["model"]):
            raise ApiError(404, f"The model {name!r} does not exist: this server runs {info['model_id']!r} "
                                "(GET /v1/models lists it)", param="model", code="model_not_found")

    def _require_ready(self) -> None:
        s = self.server
        if s.status == "loading":
            p = s.progress
            raise ApiError(503, f"the engine is still loading the model ({p['what']} {p['done']}/{p['total']}); "
                                "retry when GET /health answers 200", code="model_loading")
        if s.status != "ready":
            raise ApiError(503, f"the engine server is {s.status}", code=s.status)

    # -- generation ------------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = parse_body(await request.read())
        self._require_ready()
        s = self.server
        if self.defaults is None:
            self.defaults = generation_defaults(s.cfg.model)
        api = parse(body, kind, self.defaults, s.tokenizer)
        self._check_model(api.model)
        stream = HttpStream(next(s._conn_numbers), s.send_limit)
        try:
            try:
                await s._generate(stream, api.request)
            except P.ProtocolError as e:
                raise _event_error(P.error_event(None, e.message, e.code)) from None
            rid = stream.active[api.request.id]
            reply = Reply(api, s.tokenizer, api.model or s.info["model_id"])
            events = await stream.events()
            error = next((e for e in events if e.get("event") == "error"), None)
            if error is not None and not any(e.get("event") == "token" for e in events):
                raise _event_error(error)  # refused before any output: a plain HTTP error, also when streaming
            if api.stream:
                return await self._sse(request, stream, rid, reply, events)
            entries = []
            while True:
                entries += self._feed(reply, events, rid)[1]
                if reply.finished:
                    break
                events = await stream.events()
            if reply.error is not None:
                raise _event_error(reply.error)
            if kind == "chat":
                return _json(reply.chat_response(entries))
            return _json(reply.completion_response(list(api.request.prompt_ids), entries))
        finally:
            stream.closed = True
            if stream.active:  # the client went away (or an error): cancel it, free its blocks at once
                s._cancel_all(stream, None)

    def _feed(self, reply: Reply, events: list[dict], rid: str):
        was = reply.stopped
        news = reply.feed(events)
        if reply.stopped and not was:
            self.server.loop.abort(rid)  # a stop string: the engine stops; its done event ends the reply
        return news

    async def _sse(self, request, stream: HttpStream, rid: str, reply: Reply, events):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        api, chat = reply.api, reply.api.kind == "chat"
        out = [dumps(reply.chat_chunk({"role": "assistant", "content": ""}))] if chat else []  # JSON texts
        offset, first = 0, True  # offset: characters of the echoed prompt before the reply's text
        while True:
            text, entries = self._feed(reply, events, rid)
            if first and api.echo:  # the prompt's logprobs came with the first output
                ptext, pentries = reply.prompt_entries(list(api.request.prompt_ids))
                out.append(dumps(reply.completion_chunk(ptext, reply.legacy_logprobs(pentries))))
                offset = len(ptext)
            first = False
            if entries:
                out.append(dumps(reply.chat_chunk({"content": text}, entries) if chat
                                 else reply.completion_chunk(text, reply.legacy_logprobs(entries, offset))))
            elif text:
                out.append(reply.text_json(text))
            if reply.error is not None:
                out.append(dumps(_event_error(reply.error).body()))
            elif reply.finished:
                out.append(dumps(reply.chat_chunk({}, finish=reply.finish_reason) if chat
                                 else reply.completion_chunk("", finish=reply.finish_reason)))
                if api.include_usage:
                    out.append(dumps(reply.usage_chunk()))
            data = "".join(f"data: {o}\n\n" for o in out)
            if reply.finished:
                data += "data: [DONE]\n\n"
            await resp.write(data.encode())
            if reply.finished:
                break
            out = []
            events = await stream.events()
        await resp.write_eof()
        return resp


def setup(server, sock, api_key: str | None, url: str) -> HttpFront:
    server.http = HttpFront(server, sock, api_key, url)
    server.info["http"] = url
    return server.http

