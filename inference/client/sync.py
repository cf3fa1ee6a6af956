"""`EngineClient`: the blocking client over one connection (scripts, `generate --connect`, tests)."""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator

from inference import protocol as P
from inference.client._common import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    EngineUnavailable,
    UntrustedPeer,
    _generate_request,
    _lost,
    _raise_if_error,
    _unavailable,
)
from inference.client._trust import check_peer, check_socket_path


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
        check_socket_path(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
            check_peer(self._sock, self.path)  # before anything is sent
        except UntrustedPeer:
            self._sock.close()
            raise
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
                 ignore_eos: bool | None = None, logprobs: int | None = None,
                 prompt_logprobs: int | None = None, session: str | None = None,
                 history: str | None = None,
                 request_id=None) -> Iterator[dict]:
        """Yield token events, then one done or error event. Breaking out early cancels the request."""
        rid = request_id if request_id is not None else uuid.uuid4().hex[:16]
        req = _generate_request(rid, messages, prompt_ids, session, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=seed, ignore_eos=ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs), history)
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
