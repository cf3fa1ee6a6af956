"""Start and find the background engine server (no torch: the Textual app imports this).

    path = ensure_server("14b", progress=lambda done, total, what: ...)   # reuse or start, wait ready
    client = EngineClient(path)

The server runs detached (its own session) as `python -m inference serve ...`, logging beside its socket
(paths.py names both: one pair per model configuration, so each configuration gets its own engine). Only
a folder of this user that no one else can write to is used, and its files are opened without following
links. stop.py stops servers; server_log.py reads a start's log lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from inference import private_files
from inference.client import EngineClient, EngineError, EngineUnavailable, UntrustedPeer
from inference.client.paths import default_socket_path, log_path, runtime_dir
from inference.client.server_log import START_MARK, error_line, read_log_tail
from inference.errors import UserError

EXIT_ALREADY_RUNNING = 3  # `serve` exit code when a live server owns the socket path
LOG_ROTATE_BYTES = 10 << 20
START_TIMEOUT = 1800.0  # a 72B checkpoint from a slow disk takes a while
spawned: dict[int, subprocess.Popen] = {}  # servers this process started (stop.py reaps them)


class EngineStartError(UserError):
    """The background server exited or timed out while starting; carries this start's last log lines.

    `what` says what happened ("... exited with code 2 while starting"), `reason` is the engine's own
    error line from the log (its last `error:` line, else a traceback's last line), or None; `returncode` the
    server's exit status when it exited (0: stopped by `qwen-chat stop`, negative: killed by that signal)."""

    def __init__(self, message: str, log_file: Path | None = None, log_tail: Sequence[str] = (),
                 returncode: int | None = None):
        self.log_file = log_file
        self.returncode = returncode
        self.log_tail = list(log_tail)
        self.what = message
        self.reason = error_line(self.log_tail)
        if self.reason:
            message += ": " + (self.reason.split(": ", 1)[-1] if self.reason.startswith("error") else self.reason)
        if self.log_tail:
            message += f"\nlast lines of {log_file}:\n" + "\n".join("  " + s for s in self.log_tail)
        super().__init__(message)


def probe(socket_path: str | os.PathLike, timeout: float = 3.0) -> dict | None:
    """The server's health dict, or None when nothing answers there. Raises UntrustedPeer when the socket,
    its folder or the process listening is another user's."""
    try:
        with EngineClient(socket_path, timeout=timeout) as c:
            return c.health()
    except UntrustedPeer:
        raise
    except (EngineUnavailable, EngineError, OSError):
        return None


def _model_id(model: str) -> str:
    from inference.model_path import model_id

    return model_id(model)


def server_command(model: str, socket_path: Path, tp: int = 1, dtype: str = "auto", device: str = "auto",
                   quant: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "inference", "serve", "--model", str(model), "--tp", str(tp),
           "--dtype", dtype, "--device", device, "--socket", str(socket_path),
           "--log-file", str(log_path(socket_path))]
    if quant:
        cmd += ["--quant", quant]
    return cmd + list(extra_args)


def spawn_server(cmd: Sequence[str], log_file: Path) -> subprocess.Popen:
    """Start `cmd` detached (own session, no terminal), stdout and stderr appended to `log_file` (0600,
    opened without following links)."""
    private_files.private_dir(log_file.parent, tighten=False)
    try:
        if log_file.lstat().st_size > LOG_ROTATE_BYTES:
            log_file.replace(log_file.with_name(log_file.name + ".1"))
    except OSError:
        pass
    with open(private_files.open_private(log_file, os.O_WRONLY | os.O_APPEND, "log file"), "ab") as log:
        log.write(f"\n{START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    spawned[proc.pid] = proc
    return proc


def ensure_server(model: str, tp: int = 1, dtype: str = "auto", device: str = "auto", quant: str | None = None,
                  socket: str | os.PathLike | None = None, extra_args: Sequence[str] = (),
                  progress: Callable[[int, int, str], None] | None = None,
                  timeout: float = START_TIMEOUT) -> Path:
    """Reuse the live server for `model` or start one in the background; return its socket path once it
    reports ready. `progress(done, total, what)` follows weight loading. Raises EngineStartError."""
    mid = _model_id(model)
    path = Path(socket).expanduser() if socket else default_socket_path(mid, tp, dtype, device, quant)
    log_file = log_path(path)
    report = progress or (lambda done, total, what: None)
    proc = None
    private_files.prepare_socket_dir(path, private=path.parent.absolute() == runtime_dir().absolute())
    health = _probe_trusted(path)
    if health is None:
        report(0, 0, "starting the engine server")
        proc = spawn_server(server_command(model, path, tp, dtype, device, quant, extra_args), log_file)
    elif health.get("model_id") not in (None, mid):
        raise UserError(f"the engine server on {path} runs {health.get('model_id')}, not {model}: "
                        f"pass another --socket or stop it with `qwen-chat stop --socket {path}`")
    deadline = time.monotonic() + timeout
    gone_since = None
    while True:
        if health is not None:
            if health.get("status") == "ready":
                _check_config(path, health, tp, dtype, device, quant)
                return path
            prog = health.get("progress") or {}
            report(int(prog.get("done", 0)), int(prog.get("total", 0)), str(prog.get("what", "loading")))
        if proc is not None and proc.poll() is not None:
            if proc.returncode != EXIT_ALREADY_RUNNING:
                raise EngineStartError(f"the engine server exited with code {proc.returncode} while starting",
                                       log_file, read_log_tail(log_file, 15, this_run=True), proc.returncode)
            proc = None  # another start won the race for the socket: wait for that server instead
        if proc is None and health is None:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 10.0:
                raise EngineStartError(f"the engine server on {path} went away while starting", log_file,
                                       read_log_tail(log_file, 15, this_run=True))
        else:
            gone_since = None
        if time.monotonic() > deadline:
            if proc is not None:
                _kill_group(proc.pid)
            raise EngineStartError(f"the engine server was not ready after {timeout:.0f}s", log_file,
                                   read_log_tail(log_file, 15, this_run=True))
        time.sleep(0.2)
        health = _probe_trusted(path)


def _probe_trusted(path: Path) -> dict | None:
    try:
        return probe(path)
    except UntrustedPeer as e:
        raise UserError(str(e)) from None


def describe(health: dict) -> str:
    """What an engine runs, from its health: `demo on cpu, float32, no quant, tp 1`."""
    return (f"{health.get('model_id', '?')} on {health.get('device', '?')}, {health.get('dtype', '?')}, "
            f"{health.get('quant') or 'no quant'}, tp {health.get('tp', '?')}")


def _check_config(path: Path, health: dict, tp: int, dtype: str, device: str, quant: str | None) -> None:
    """Refuse to use a ready engine that runs another configuration than the one asked for."""
    asked = []
    if int(health.get("tp") or 1) != int(tp):
        asked.append(f"--tp {tp}")
    if device != "auto" and str(health.get("device", "")).split(":")[0] != device:
        asked.append(f"--device {device}")
    if dtype != "auto" and health.get("dtype") != dtype:
        asked.append(f"--dtype {dtype}")
    if quant and health.get("quant") != quant:
        asked.append(f"--quant {quant}")
    if asked:
        raise UserError(f"the engine server on {path} runs {describe(health)}, not {' '.join(asked)}: stop it "
                        f"with `qwen-chat stop --socket {path}` and start again, or pass another --socket")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass


