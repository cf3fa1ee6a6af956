"""`serve --http [HOST:]PORT`: parse the address, apply the key policy, bind the listening TCP socket.

Bound before the model loads (as the Unix socket is), so a taken port is one `error:` line at once
and `GET /health` answers 503 with progress while weights load. Without a host it listens on
127.0.0.1 only; a non-loopback address needs an API key (or `--insecure`).
"""

from __future__ import annotations

import ipaddress
import socket

from inference.errors import UserError

API_KEY_ENV = "QWEN_CHAT_API_KEY"


def parse_address(spec: str) -> tuple[str, int]:
    """'8000' -> ('127.0.0.1', 8000); 'HOST:PORT'; '[::1]:8000' for IPv6."""
    host, port = "127.0.0.1", spec.strip()
    if ":" in port:
        host, _, port = port.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise UserError(f"--http {spec!r}: the host before ':' is empty; use PORT or HOST:PORT")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--http {spec!r}: the port must be a number in 0..65535 (0: any free port); "
                        "use PORT or HOST:PORT, e.g. --http 8000 or --http 0.0.0.0:8000")
    return host, int(port)


def _addresses(host: str, port: int) -> list[tuple]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--http: cannot resolve the host {host!r} ({e.strerror}); give an IP address") from None


def is_loopback(host: str) -> bool:
    addrs = _addresses(host, 0)
    return bool(addrs) and all(ipaddress.ip_address(a[4][0].split("%")[0]).is_loopback for a in addrs)


def check_key_policy(host: str, api_key: str | None, insecure: bool) -> None:
    if api_key is not None and not api_key.strip():
        raise UserError("the API key is empty: pass --api-key KEY (or set $QWEN_CHAT_API_KEY) with a non-empty key")
    if api_key is None and not insecure and not is_loopback(host):
        raise UserError(f"--http on {host} is reachable from other machines: require a key with --api-key KEY "
                        f"(or ${API_KEY_ENV}), or pass --insecure to serve it without one")


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening non-blocking socket and the URL it serves (with the real port when PORT was 0)."""
    family, _, _, _, addr = _addresses(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(512)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise UserError(f"--http: cannot listen on {host}:{port} ({e.strerror or e}); "
                        "pick another port or stop what uses it") from None
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    return sock, f"http://{shown}:{bound[1]}"
