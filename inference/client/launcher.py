"""Start, find and stop the background engine server (no torch: the Textual app imports this).

    path = ensure_server("14b", progress=lambda done, total, what: ...)   # reuse or start, wait ready
    client = EngineClient(path)

The server runs detached (its own session) as `python -m inference serve ...`, logging to
`<name>.log` beside its socket `<name>.sock` in `$XDG_RUNTIME_DIR/qwen-chat/` (fallback
`~/.cache/qwen-chat/`, made 0700). `<name>` is the model id plus the options that differ from the
defaults (`demo+w8a16`, `14b-chat+tp2`): each configuration gets its own engine. Only a folder of this
user that no one else can write to is used, and its files are opened without following links.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from inference import private_files
from inference.client import EngineClient, EngineError, EngineUnavailable, UntrustedPeer
from inference.errors import CliParser, UserError

START_MARK = "--- "  # spawn_server's line before each start: "--- <time> starting: <command>"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b[^\s]*: \S")
EXIT_ALREADY_RUNNING = 3  # `serve` exit code when a live server owns the socket path
LOG_ROTATE_BYTES = 10 << 20
START_TIMEOUT = 1800.0  # a 72B checkpoint from a slow disk takes a while
MAX_SOCKET_PATH = 107  # bytes of a Unix socket path, without the trailing NUL
_spawned: dict[int, subprocess.Popen] = {}  # servers this process started


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


def read_log_tail(path: str | os.PathLike, n: int = 20, this_run: bool = False) -> list[str]:
    """The last `n` lines of a log file ([] when it does not exist). With `this_run`, only the lines
    after the last start marker that `spawn_server` writes: nothing from earlier runs."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256 * 1024))
            lines = [ln.decode("utf-8", "replace").rstrip("\r\n") for ln in f]
    except OSError:
        return []
    if this_run:
        starts = [i for i, ln in enumerate(lines) if ln.startswith(START_MARK) and " starting: " in ln]
        lines = lines[starts[-1] + 1:] if starts else lines
    return lines[-n:] if n > 0 else []


def error_line(lines: Sequence[str]) -> str | None:
    """A failed start's own reason in its log lines: the last `error: ...` line (what the CLI prints for
    bad input), else the last line of a traceback (`SomeError: ...`), else None."""
    for line in reversed(lines):
        if line.startswith(("error: ", "error (rank")):
            return line.strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line.strip()
    return None


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
    _spawned[proc.pid] = proc
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


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid in _spawned:  # our own child: poll() reaps it, so an exited server is not a zombie here
        return _spawned[pid].poll() is None
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
        paths = model_sockets(_model_id(args.model)) or [default_socket_path(_model_id(args.model))]
    else:
        paths = sorted(runtime_dir().glob("*.sock"))
        if not paths:
            print(f"no engine server is running (no sockets in {runtime_dir()})")
            return 0
    for p in paths:
        print(stop_server(p, args.timeout))
    return 0
