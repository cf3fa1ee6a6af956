"""Torch-free clients of the engine server (docs/protocol.md): `EngineClient` (blocking) and
`AsyncEngineClient` (asyncio, for the Textual app).

    c = EngineClient(socket_path)
    for ev in c.generate(messages=[{"role": "user", "content": "Hi"}], max_new_tokens=64):
        print(ev.get("text", ""), end="")      # token events; the last event is done or error

`generate` yields the server's event dicts and always ends with a `done` or an `error` event: if the
server dies mid-stream the iterator yields an error event with code "disconnected" at once (the
socket closes), or after `stall_timeout` + `timeout` seconds when the server stops answering even a
health probe. Leaving the loop early cancels the request on the server.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator

from inference import protocol as P

DEFAULT_TIMEOUT = 10.0  # seconds for connect and for health/stats/tokenize/shutdown replies
DEFAULT_STALL_TIMEOUT = 30.0  # seconds without any event before a stream probes the server


class EngineUnavailable(ConnectionError):
    """No engine server answers on the socket, or the connection to it was lost."""


class EngineError(RuntimeError):
    """The server answered a request with an error event."""

    def __init__(self, message: str, code: str = P.ENGINE_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code


def _unavailable(path: str, err: BaseException | str) -> EngineUnavailable:
    return EngineUnavailable(
        f"no engine server answers on {path} ({err}); start one with `qwen-chat serve --model M`, "
        "or let the app start it"
    )


def _lost(path: str) -> str:
    return (f"lost the connection to the engine server at {path} (it stopped or crashed); "
            "see its log file next to the socket")


def _generate_request(rid, messages, prompt_ids, session, sampling: dict) -> dict:
    req = P.request("generate", id=rid, messages=messages, prompt_ids=prompt_ids, session=session,
                    **{k: v for k, v in sampling.items() if v is not None})
    P.parse_request(req)  # a bad argument raises ProtocolError (a ValueError) here, not on the server
    return req


def _raise_if_error(ev: dict) -> dict:
    if ev.get("event") == "error":
        raise EngineError(ev.get("message", "unknown error"), ev.get("code", P.ENGINE_ERROR))
    return ev.get("result", {})


class EngineClient:
    """Blocking client over one connection. Use it from one thread at a time (`cancel` from any)."""

    def __init__(self, socket_path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT):
        self.path = str(socket_path)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self._buf = bytearray()
        self._inbox: dict[object, deque] = {}
        self._abandoned: set = set()
        self._ids = itertools.count(1)
        self._closed = False
        self._last_rx = 0.0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise _unavailable(self.path, e) from None

    # -- plumbing ------------------------------------------------------------------------------------
    def _send(self, obj: dict) -> None:
        if self._closed:
            raise EngineUnavailable(_lost(self.path))
        try:
            self._sock.sendall(P.encode(obj))
        except OSError as e:
            self._closed = True
            raise EngineUnavailable(f"{_lost(self.path)}: {e}") from None

    def _read_event(self, timeout: float) -> dict | None:
        """The next event from the socket; None on timeout; EngineUnavailable when the server is gone."""
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                try:
                    ev = P.decode_line(line)
                except P.ProtocolError:
                    continue
                if isinstance(ev, dict):
                    return ev
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as e:
                self._closed = True
                raise EngineUnavailable(f"{_lost(self.path)}: {e}") from None
            if not chunk:
                self._closed = True
                raise EngineUnavailable(_lost(self.path))
            self._last_rx = time.monotonic()
            self._buf += chunk

    def _next_for(self, rid, timeout: float) -> dict | None:
        """The next event for `rid` (events for other ids are kept for their readers)."""
        deadline = time.monotonic() + timeout
        while True:
            q = self._inbox.get(rid)
            if q:
                return q.popleft()
            if self._closed:
                raise EngineUnavailable(_lost(self.path))
            ev = self._read_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                return None
            eid = ev.get("id")
            if eid in self._abandoned:
                if ev.get("event") in ("done", "error", "result"):
                    self._abandoned.discard(eid)
                continue
            self._inbox.setdefault(eid, deque()).append(ev)

    def _call(self, op: str, **fields) -> dict:
        rid = f"_{op}{next(self._ids)}"
        self._send(P.request(op, id=rid, **fields))
        try:
            ev = self._next_for(rid, self.timeout)
        finally:
            self._inbox.pop(rid, None)
        if ev is None:
            raise EngineUnavailable(
                f"the engine server at {self.path} did not answer {op} within {self.timeout}s")
        return _raise_if_error(ev)

    # -- API ---------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("health")

    def stats(self) -> dict:
        return self._call("stats")

    def tokenize(self, text: str | None = None, messages: list[dict] | None = None) -> list[int]:
        return self._call("tokenize", text=text, messages=messages)["token_ids"]

    def shutdown(self) -> dict:
        return self._call("shutdown")

    def cancel(self, request_id) -> None:
        self._send(P.request("cancel", id=request_id))

    def generate(self, messages: list[dict] | None = None, prompt_ids: list[int] | None = None, *,
                 max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None,
                 repetition_penalty: float | None = None, seed: int | None = None,
                 ignore_eos: bool | None = None, session: str | None = None,
                 request_id=None) -> Iterator[dict]:
        """Yield token events, then one done or error event. Breaking out early cancels the request."""
        rid = request_id if request_id is not None else uuid.uuid4().hex[:16]
        req = _generate_request(rid, messages, prompt_ids, session, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=seed, ignore_eos=ignore_eos))
        return self._stream(rid, req)

    def _stream(self, rid, req: dict) -> Iterator[dict]:
        self._send(req)
        finished = False
        probe_at = None
        try:
            while True:
                try:
                    ev = self._next_for(rid, self.stall_timeout if probe_at is None else self.timeout)
                    if ev is None and probe_at is None:
                        probe = f"_probe{next(self._ids)}"
                        self._abandoned.add(probe)  # its reply is dropped; any bytes count as alive
                        probe_at = time.monotonic()
                        self._send(P.request("health", id=probe))
                        continue
                except EngineUnavailable:
                    finished = True
                    yield P.error_event(rid, _lost(self.path), P.DISCONNECTED)
                    return
                if ev is None:
                    if self._last_rx < probe_at:  # not even the health probe came back: treat as dead
                        finished = True
                        self.close()
                        yield P.error_event(rid, f"the engine server at {self.path} stopped answering",
                                            P.DISCONNECTED)
                        return
                    probe_at = None  # the server answered the probe: still working (long prefill)
                    continue
                probe_at = None
                if ev.get("event") in ("done", "error"):
                    finished = True
                yield ev
                if finished:
                    return
        finally:
            self._inbox.pop(rid, None)
            if not finished and not self._closed:
                self._abandoned.add(rid)
                try:
                    self.cancel(rid)
                except EngineUnavailable:
                    pass

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncEngineClient:
    """asyncio client over one connection; any number of concurrent generate streams and calls.

    `async with AsyncEngineClient(path) as c:` or `c = await AsyncEngineClient.open(path)`;
    methods connect on first use when needed.
    """

    def __init__(self, socket_path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT):
        self.path = str(socket_path)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None
        self._streams: dict[object, asyncio.Queue] = {}
        self._calls: dict[object, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._lost = False

    @classmethod
    async def open(cls, socket_path, timeout: float = DEFAULT_TIMEOUT, **kw) -> AsyncEngineClient:
        c = cls(socket_path, timeout, **kw)
        await c.connect()
        return c

    async def connect(self) -> None:
        if self._writer is not None:
            return
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=P.MAX_LINE_BYTES + 2), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise _unavailable(self.path, e or "timed out") from None
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await self._reader.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    try:
                        ev = P.decode_line(line)
                    except P.ProtocolError:
                        continue
                    if isinstance(ev, dict):
                        self._dispatch(ev)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._lost = True
            for rid, q in self._streams.items():
                q.put_nowait(P.error_event(rid, _lost(self.path), P.DISCONNECTED))
            for fut in self._calls.values():
                if not fut.done():
                    fut.set_exception(EngineUnavailable(_lost(self.path)))

    def _dispatch(self, ev: dict) -> None:
        eid = ev.get("id")
        if eid in self._calls:
            fut = self._calls.pop(eid)
            if not fut.done():
                fut.set_result(ev)
        elif eid in self._streams:
            self._streams[eid].put_nowait(ev)

    async def _send(self, obj: dict) -> None:
        await self.connect()
        if self._lost:
            raise EngineUnavailable(_lost(self.path))
        try:
            self._writer.write(P.encode(obj))
            await self._writer.drain()
        except OSError as e:
            self._lost = True
            raise EngineUnavailable(f"{_lost(self.path)}: {e}") from None

    async def _call(self, op: str, **fields) -> dict:
        rid = f"_{op}{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            await self._send(P.request(op, id=rid, **fields))
            ev = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            raise EngineUnavailable(
                f"the engine server at {self.path} did not answer {op} within {self.timeout}s") from None
        finally:
            self._calls.pop(rid, None)
        return _raise_if_error(ev)

    async def health(self) -> dict:
        return await self._call("health")

    async def stats(self) -> dict:
        return await self._call("stats")

    async def tokenize(self, text: str | None = None, messages: list[dict] | None = None) -> list[int]:
        return (await self._call("tokenize", text=text, messages=messages))["token_ids"]

    async def shutdown(self) -> dict:
        return await self._call("shutdown")

    async def cancel(self, request_id) -> None:
        await self._send(P.request("cancel", id=request_id))

    async def generate(self, messages: list[dict] | None = None, prompt_ids: list[int] | None = None, *,
                       max_new_tokens: int | None = None, temperature: float | None = None,
                       top_p: float | None = None, top_k: int | None = None,
                       repetition_penalty: float | None = None, seed: int | None = None,
                       ignore_eos: bool | None = None, session: str | None = None,
                       request_id=None) -> AsyncIterator[dict]:
        """Async-iterate token events, then one done or error event; leaving early cancels."""
        rid = request_id if request_id is not None else uuid.uuid4().hex[:16]
        req = _generate_request(rid, messages, prompt_ids, session, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=seed, ignore_eos=ignore_eos))
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = q
        finished = False
        try:
            await self._send(req)
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), self.stall_timeout)
                except asyncio.TimeoutError:
                    try:  # any answer proves the server alive; a dead one makes this raise
                        await self._call("health")
                    except (EngineUnavailable, EngineError):
                        finished = True
                        yield P.error_event(rid, f"the engine server at {self.path} stopped answering",
                                            P.DISCONNECTED)
                        return
                    continue
                finished = ev.get("event") in ("done", "error")
                yield ev
                if finished:
                    return
        except EngineUnavailable:
            if not finished:
                finished = True
                yield P.error_event(rid, _lost(self.path), P.DISCONNECTED)
        finally:
            self._streams.pop(rid, None)
            if not finished and not self._lost:
                try:
                    await self.cancel(rid)
                except (EngineUnavailable, RuntimeError):
                    pass

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._read_task is not None:
            self._read_task.cancel()
            try:
                await self._read_task
            except (asyncio.CancelledError, Exception):
                pass
        self._writer = None

    async def __aenter__(self) -> AsyncEngineClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
