"""`qwen-chat stop`: ask background engine servers to shut down and wait until they are gone."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from inference.client import EngineClient, EngineError, EngineUnavailable, UntrustedPeer
from inference.client.launcher import spawned
from inference.client.paths import default_socket_path, model_sockets, runtime_dir
from inference.errors import CliParser, UserError
from inference.model_path import model_id


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid in spawned:  # our own child: poll() reaps it, so an exited server is not a zombie here
        return spawned[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet (e.g. a server the app started, stopped by
    `qwen-chat stop`): gone, though kill(pid, 0) still finds it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def stop_server(path: Path, timeout: float = 30.0) -> str:
    """Ask the server on `path` to shut down and wait until it is gone. Returns what happened."""
    try:
        with EngineClient(path, timeout=5.0) as c:
            health = c.health()
            c.shutdown()
    except UntrustedPeer as e:
        raise UserError(str(e)) from None
    except (EngineUnavailable, EngineError):
        return f"no engine server is running on {path}"
    pid = health.get("pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not path.exists() and not _pid_alive(pid):
            return f"stopped the engine server for {health.get('model_id', '?')} (pid {pid}, {path})"
        time.sleep(0.1)
    raise UserError(f"the engine server (pid {pid}) on {path} did not stop within {timeout:.0f}s; "
                    f"end it with `kill {pid}`")


def stop_main(argv: Sequence[str] | None = None) -> int:
    """`qwen-chat stop [--model M | --socket PATH]`: no option stops every server in the default directory;
    `--model M` every configuration of M."""
    ap = CliParser(prog="qwen-chat stop", description="Stop background engine servers.", allow_abbrev=False)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--model", help="stop the servers of this model (path, alias or demo), every configuration")
    g.add_argument("--socket", help="stop the server listening on this socket")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to exit")
    args = ap.parse_args(argv)
    if args.socket:
        paths = [Path(args.socket).expanduser()]
    elif args.model:  # every configuration of the model
        paths = model_sockets(model_id(args.model)) or [default_socket_path(model_id(args.model))]
    else:
        paths = sorted(runtime_dir().glob("*.sock"))
        if not paths:
            print(f"no engine server is running (no sockets in {runtime_dir()})")
            return 0
    for p in paths:
        print(stop_server(p, args.timeout))
    return 0
