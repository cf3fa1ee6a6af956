"""Torch-free clients of the engine server (docs/protocol.md): `EngineClient` (blocking) and
`AsyncEngineClient` (asyncio, for the Textual app).

    c = EngineClient(socket_path)
    for ev in c.generate(messages=[{"role": "user", "content": "Hi"}], max_new_tokens=64):
        print(ev.get("text", ""), end="")      # token events; the last event is done or error

`generate` yields the server's event dicts and always ends with a `done` or an `error` event: if the
server dies mid-stream the iterator yields an error event with code "disconnected" at once (the
socket closes), or after `stall_timeout` + `timeout` seconds when the server stops answering even a
health probe. Leaving the loop early cancels the request on the server.

Both refuse (`UntrustedPeer`, an `EngineUnavailable`) before sending anything when the socket or its
folder is not this user's, or the process listening runs as another user (`_trust.py`).
"""

from inference.client._common import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    EngineError,
    EngineUnavailable,
    UntrustedPeer,
)
from inference.client.aio import AsyncEngineClient
from inference.client.sync import EngineClient

__all__ = ["AsyncEngineClient", "EngineClient", "EngineError", "EngineUnavailable", "UntrustedPeer", "DEFAULT_TIMEOUT",
           "DEFAULT_STALL_TIMEOUT"]
