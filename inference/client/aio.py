"""`AsyncEngineClient`: the asyncio client (the Textual app); many streams share one connection."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator

from inference import protocol as P
from inference.client._common import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    EngineError,
    EngineUnavailable,
    _generate_request,
    _lost,
    _raise_if_error,
    _unavailable,
)
from inference.client._trust import check_peer, check_socket_path


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
        check_socket_path(self.path)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=P.MAX_LINE_BYTES + 2), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise _unavailable(self.path, e or "timed out") from None
        try:
            check_peer(writer.get_extra_info("socket"), self.path)  # before anything is sent
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
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
                       ignore_eos: bool | None = None, logprobs: int | None = None,
                       prompt_logprobs: int | None = None, session: str | None = None,
                       history: str | None = None,
                       request_id=None) -> AsyncIterator[dict]:
        """Async-iterate token events, then one done or error event; leaving early cancels."""
        rid = request_id if request_id is not None else uuid.uuid4().hex[:16]
        req = _generate_request(rid, messages, prompt_ids, session, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=seed, ignore_eos=ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs), history)
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
