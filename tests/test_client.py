"""Client behaviour that needs no engine: nothing listening, a server that never answers (a real
listening socket), arguments refused before anything is sent, and no torch import."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from inference.client import AsyncEngineClient, EngineClient, EngineUnavailable
from inference.protocol import ProtocolError


@pytest.fixture
def mute(tmp_path):
    """A socket that accepts connections and never says anything (a hung server)."""
    path = tmp_path / "mute.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(8)
    yield path
    s.close()


def test_nothing_listening_raises_engine_unavailable(tmp_path):
    with pytest.raises(EngineUnavailable, match="no engine server answers on .*missing.sock"):
        EngineClient(tmp_path / "missing.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(EngineUnavailable, match="qwen-chat serve"):
        EngineClient(tmp_path / "stale.sock")
    with pytest.raises(EngineUnavailable):
        asyncio.run(AsyncEngineClient(tmp_path / "missing.sock").health())


def test_bad_arguments_are_refused_before_sending(mute):
    with EngineClient(mute, timeout=1) as c:
        with pytest.raises(ProtocolError, match="exactly one of 'prompt_ids' or 'messages'"):
            next(c.generate())
        with pytest.raises(ProtocolError, match=r"'top_p' must be a number in \(0, 1\]"):
            next(c.generate(prompt_ids=[1], top_p=2.0))
        with pytest.raises(ProtocolError, match=r"messages\[0\].role"):
            next(c.generate(messages=[{"role": "robot", "content": "hi"}]))


def test_a_server_that_stops_answering_ends_the_stream_with_an_error(mute):
    with EngineClient(mute, timeout=0.5, stall_timeout=0.5) as c:
        with pytest.raises(EngineUnavailable, match="did not answer health within 0.5s"):
            c.health()
    t0 = time.monotonic()
    with EngineClient(mute, timeout=0.5, stall_timeout=0.5) as c:
        evs = list(c.generate(prompt_ids=[1, 2]))
    assert [e["code"] for e in evs] == ["disconnected"] and "stopped answering" in evs[0]["message"]
    assert time.monotonic() - t0 < 3

    async def run():
        async with AsyncEngineClient(mute, timeout=0.5, stall_timeout=0.5) as c:
            return [e async for e in c.generate(prompt_ids=[1, 2])]

    t0 = time.monotonic()
    evs = asyncio.run(run())
    assert [e["code"] for e in evs] == ["disconnected"] and time.monotonic() - t0 < 3
