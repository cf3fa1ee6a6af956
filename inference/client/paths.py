"""Where a background engine server lives: its socket and log file, one pair per model configuration.

`$XDG_RUNTIME_DIR/qwen-chat/` (fallback `~/.cache/qwen-chat/`) holds `<name>.sock` and `<name>.log`;
`<name>` is the model id plus the options that differ from the defaults (`demo+w8a16`, `14b-chat+tp2`).
No torch: the Textual app imports this.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MAX_SOCKET_PATH = 107  # bytes of a Unix socket path, without the trailing NUL


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/qwen-chat` when that is a writable directory, else `~/.cache/qwen-chat`."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "qwen-chat"
    return Path.home() / ".cache" / "qwen-chat"


def engine_name(model_id: str, tp: int = 1, dtype: str = "auto", device: str = "auto",
                quant: str | None = None) -> str:
    """The model id plus every option that differs from the default, e.g. `demo+cpu+w8a16`."""
    parts = [model_id]
    if int(tp) != 1:
        parts.append(f"tp{int(tp)}")
    parts += [v for v in (device, dtype) if v and v != "auto"]
    if quant:
        parts.append(quant)
    return "+".join([parts[0], *(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)) for p in parts[1:])])


def default_socket_path(model_id: str, tp: int = 1, dtype: str = "auto", device: str = "auto",
                        quant: str | None = None) -> Path:
    """Where the engine of this model and configuration listens (one socket per configuration). Options
    that would make the path too long for a Unix socket are named by a short hash instead."""
    name = engine_name(model_id, tp, dtype, device, quant)
    path = runtime_dir() / f"{name}.sock"
    if name != model_id and len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        digest = hashlib.sha1(name[len(model_id):].encode()).hexdigest()[:6]
        path = runtime_dir() / f"{model_id}+{digest}.sock"
    return path


def model_sockets(model_id: str) -> list[Path]:
    """The sockets of every configuration of `model_id` in the default folder."""
    d = runtime_dir()
    return sorted({*d.glob(f"{model_id}.sock"), *d.glob(f"{model_id}+*.sock")})


def log_path(socket_path: str | os.PathLike) -> Path:
    p = Path(socket_path)
    return p.with_name(p.stem + ".log") if p.suffix == ".sock" else p.with_name(p.name + ".log")
