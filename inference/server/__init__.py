"""The engine server: rank 0 serves the engine on a local Unix socket (docs/protocol.md).

`main(argv)` is the `serve` command; see serve.py, app.py (asyncio side), handlers.py (request lines),
engine_loop.py (engine thread), connection.py (per-client I/O) and listen.py (socket path, permissions,
stale sockets).
"""

from inference.server.serve import main

__all__ = ["main"]
