"""The app's link to the engine: start it (or attach to a running one), health, stats, reconnect.

Torch-free: uses only `inference.client.launcher`, `inference.client` and `inference.model_path`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from inference.client import AsyncEngineClient, EngineClient, EngineError, EngineUnavailable, UntrustedPeer, launcher
from inference.client.paths import default_socket_path, log_path
from inference.client.server_log import error_line, read_log_tail
from inference.model_path import model_id

Progress = Callable[[int, int, str], None]


@dataclass
class EngineOptions:
    model: str = "demo"
    tp: int = 1
    dtype: str = "auto"
    quant: str | None = None
    device: str = "auto"
    socket: str | None = None  # attach to the engine listening here; never start one

    @property
    def attach(self) -> bool:
        return self.socket is not None


class StartFailed(RuntimeError):
    """The engine did not come up. `log_tail` holds the last lines of its log, `hint` what to do."""

    def __init__(self, message: str, log_tail: list[str] | None = None, hint: str = "",
                 log_path: str | None = None):
        super().__init__(message)
        self.log_tail = list(log_tail or [])
        self.hint = hint
        self.log_path = log_path


class EngineLink:
    """Starts or attaches to the engine and talks to it; the app keeps the engine's state
    (`ChatApp.engine_state`) from what these methods return or raise."""

    def __init__(self, opts: EngineOptions):
        self.opts = opts
        self.socket_path = str(opts.socket or default_socket_path(  # one engine per configuration
            model_id(opts.model), tp=opts.tp, dtype=opts.dtype, device=opts.device, quant=opts.quant))
        self.info: dict = {}
        self.stats: dict = {}

    @property
    def log_path(self) -> str:
        return str(log_path(self.socket_path))

    # -- start / attach (blocking: run in a thread) -----------------------------------------------
    def start(self, progress: Progress | None = None) -> dict:
        """Make sure an engine is ready (start one unless attaching) and return its health."""
        try:
            if self.opts.attach:
                health = self._attach(progress)
            else:
                launcher.ensure_server(
                    self.opts.model, tp=self.opts.tp, dtype=self.opts.dtype, device=self.opts.device,
                    quant=self.opts.quant, socket=self.socket_path, progress=progress)
                with EngineClient(self.socket_path) as c:
                    health = c.health()
        except StartFailed:
            raise
        except Exception as e:  # noqa: BLE001 - every start failure becomes a screen with the log
            raise self._start_error(e) from e
        self.info = health
        return health

    async def start_in_thread(self, progress: Progress, name: str) -> dict:
        """Run the blocking `start` in a daemon thread named `name` (quitting never waits for it) and
        return its result; `progress` is called from that thread."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def target() -> None:
            try:
                result = self.start(progress)
            except BaseException as e:  # noqa: BLE001 - handed to the event loop
                err = e
                loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(err))
            else:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        threading.Thread(target=target, name=name, daemon=True).start()
        return await done

    def _attach(self, progress: Progress | None) -> dict:
        import time

        while True:
            try:
                with EngineClient(self.socket_path) as c:
                    health = c.health()
            except UntrustedPeer as e:  # another user's socket or folder: say so, never "not running"
                raise StartFailed(str(e), hint="Nothing was sent to it.") from e
            except EngineUnavailable as e:
                raise StartFailed(
                    f"no engine listens on {self.socket_path}", hint=(
                        "Start one with `qwen-chat serve --model <model> --socket " + self.socket_path
                        + "`, or run qwen-chat without --socket to start one automatically.")) from e
            if health.get("status") == "ready":
                return health
            p = health.get("progress") or {}
            if progress is not None:
                progress(int(p.get("done", 0)), int(p.get("total", 0)), str(p.get("what", "loading")))
            time.sleep(0.2)

    def _start_error(self, e: Exception) -> StartFailed:
        """The engine's own error line first (from this start's log lines only), then what happened."""
        log_path = str(getattr(e, "log_file", None) or self.log_path)
        lines = read_log_tail(log_path, 30, this_run=True)
        what = getattr(e, "what", None) or (str(e) or type(e).__name__).split("\nlast lines of", 1)[0]
        reason = error_line(lines) or getattr(e, "reason", None)
        message = f"{reason}\n({what})" if reason and reason not in what else what
        code = getattr(e, "returncode", None)
        if code is not None and code <= 0 and not reason:  # 0: asked to stop (stop, SIGTERM); < 0: killed
            how = "by `qwen-chat stop` or a signal" if code == 0 else f"by signal {_signal_name(-code)}"
            hint = "Press r to start it again, c to browse your sessions without it, or q to quit."
            if code == -signal.SIGKILL:
                hint += " If nobody stopped it, the system may have run out of memory."
            return StartFailed(f"the engine was stopped while starting ({how})", lines, hint, log_path)
        hint = (f"Check the model ({self.opts.model!r}), --device and --dtype. Run "
                f"`qwen-chat serve --model {self.opts.model}` in a terminal to see the whole output, "
                "then press r to retry.")
        return StartFailed(message, lines, hint, log_path)

    # -- talking to it ----------------------------------------------------------------------------
    def client(self) -> AsyncEngineClient:
        return AsyncEngineClient(self.socket_path)

    async def alive(self) -> bool:
        """Whether the engine answers a health check now."""
        try:
            async with self.client() as c:
                self.info = await asyncio.wait_for(c.health(), 5)
            return self.info.get("status") == "ready"
        except (EngineUnavailable, EngineError, OSError, asyncio.TimeoutError):
            return False

    async def tokenize(self, text: str) -> list[int]:
        async with self.client() as c:
            return await c.tokenize(text)

    async def poll_stats(self) -> dict | None:
        """The engine's stats ({} when it does not answer in time); None when it is gone (no server
        listens on the socket any more, or it closed the connection)."""
        try:
            async with self.client() as c:
                self.stats = await asyncio.wait_for(c.stats(), 5)
        except EngineUnavailable:
            self.stats = {}
            return None
        except (EngineError, OSError, asyncio.TimeoutError):
            self.stats = {}
        return self.stats


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
