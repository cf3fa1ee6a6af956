"""One client connection: splits incoming bytes into lines, writes events with a bounded buffer.

A line longer than `MAX_LINE_BYTES` is discarded up to its newline and answered with one error
event; the connection stays usable. Token events are refused (`send` returns False) once the
transport holds more than `send_limit` unsent bytes: the server then cancels this connection's
requests instead of letting a slow reader grow memory or stall anyone else. Control events
(done, error, results) are always queued.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from inference import protocol as P

log = logging.getLogger("inference.server")
KERNEL_BUFFER = 256 << 10  # about the kernel's default send buffer of a Unix socket


class Connection:
    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 send_limit: int):
        self.number = number
        self.reader, self.writer = reader, writer
        self.send_limit = send_limit
        self.active: dict[object, str] = {}  # client request id -> engine request id
        self.closed = False
        self.overloaded = False
        writer.transport.set_write_buffer_limits(high=send_limit)
        sock = writer.get_extra_info("socket")
        if sock is not None and send_limit < KERNEL_BUFFER:  # a small budget covers the kernel's buffer too
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(send_limit, 4096))
            except OSError:
                pass

    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def send(self, event: dict, control: bool = True) -> bool:
        """Queue one event; False (nothing queued) when the connection is gone or, for token events,
        when the client is not reading fast enough."""
        if self.closed or self.writer.is_closing():
            return False
        if not control and self.buffered() > self.send_limit:
            return False
        self.writer.write(P.encode(event))
        return True

    async def lines(self):
        """Yield complete request lines (without the newline); oversized ones as None."""
        buf = bytearray()
        discarding = False
        while not self.closed:
            if self.buffered() > self.send_limit:  # the client sends but does not read: wait for it
                try:
                    await self.writer.drain()
                except (ConnectionError, OSError):
                    return
            try:
                chunk = await self.reader.read(1 << 16)
            except (ConnectionError, OSError):
                return
            if not chunk:
                if buf and not discarding:
                    yield bytes(buf)
                return
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    if not discarding:
                        buf += chunk[start:]
                        if len(buf) > P.MAX_LINE_BYTES:
                            buf.clear()
                            discarding = True
                            yield None
                    break
                if discarding:
                    discarding = False
                else:
                    buf += chunk[start:nl]
                    if len(buf) > P.MAX_LINE_BYTES:
                        yield None
                    elif buf.strip():
                        yield bytes(buf)
                    buf.clear()
                start = nl + 1

    async def flush_and_close(self, timeout: float) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
