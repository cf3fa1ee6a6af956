"""The engine thread: owns the `LLMEngine`, applies queued commands between steps, publishes outputs.

Commands (add / abort / stats / stop) come from the asyncio thread through a thread-safe queue and
are drained between `engine.step()` calls, so a cancel takes effect before the next step. When no
request is running the thread blocks on the queue. Outputs go back to the asyncio loop with
`call_soon_threadsafe`, stripped of tensors.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from inference import protocol as P
from inference.errors import PromptTooLong, UserError

log = logging.getLogger("inference.server")
KEEPALIVE_S = 60.0  # idle seconds between keepalives (the process group times out after 300 s)


@dataclass
class Output:
    """One request's news from one step, as the asyncio side sees it."""

    request_id: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    usage: dict | None = None
    error: str | None = None  # add_request refused it (e.g. prompt too long)
    error_code: str = P.BAD_REQUEST  # the protocol code of that refusal
    logprobs: list | None = None  # RequestOutput.logprobs / prompt_logprobs (asked for by HTTP requests)
    prompt_logprobs: list | None = None


def usage_dict(usage) -> dict | None:
    if usage is None:
        return None
    if isinstance(usage, dict):
        return dict(usage)
    names = ("prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms", "decode_tok_s")
    return {n: getattr(usage, n, None) for n in names}


class EngineLoop(threading.Thread):
    """Runs `make_engine(progress)` then the step loop. Callbacks run on the asyncio loop via `call`.

    on_progress(done, total, what), on_ready(engine), on_outputs(list[Output]),
    on_crash(message, traceback_text), on_exit().
    """

    def __init__(self, make_engine: Callable, call: Callable, on_progress: Callable, on_ready: Callable,
                 on_outputs: Callable, on_crash: Callable, on_exit: Callable):
        super().__init__(name="engine-loop", daemon=True)
        self._make_engine = make_engine
        self._call = call
        self._on_progress, self._on_ready, self._on_outputs = on_progress, on_ready, on_outputs
        self._on_crash, self._on_exit = on_crash, on_exit
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._live: set[str] = set()  # request ids added to the engine and not yet finished
        self.engine = None
        self.load_error: UserError | None = None  # the model could not load because of bad input

    # -- called from the asyncio thread --------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], params) -> None:
        self._commands.put(("add", request_id, prompt_ids, params))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def stats(self, reply: Callable) -> None:
        """`reply(stats_dict_or_exception)` is called on the asyncio loop."""
        self._commands.put(("stats", reply))

    def stop(self) -> None:
        self._commands.put(("stop",))

    # -- the thread ----------------------------------------------------------------------------------
    def _progress(self, done, total, what="") -> None:
        self._call(self._on_progress, done, total, what)

    def run(self) -> None:
        try:
            self.engine = self._make_engine(self._progress)
        except UserError as e:  # a bad checkpoint or option: `serve` ends with one `error:` line, exit 2
            self.load_error = e
            self._call(self._on_crash, f"loading the model failed: {e}", "")
            self._call(self._on_exit)
            return
        except BaseException as e:  # any load failure is reported to clients
            self._call(self._on_crash, f"loading the model failed: {e}", traceback.format_exc())
            self._call(self._on_exit)
            return
        self._call(self._on_ready, self.engine)
        crashed = False
        try:
            self._serve()
        except BaseException as e:
            crashed = True
            self._call(self._on_crash, f"the engine crashed: {type(e).__name__}: {e}", traceback.format_exc())
        finally:
            try:
                self.engine.shutdown()
            except Exception as e:
                if crashed:  # expected when a rank died; the crash itself is already logged
                    log.warning("engine.shutdown() after the crash failed too: %s", str(e)[:200])
                else:
                    log.exception("engine.shutdown() failed")
            self._call(self._on_exit)

    def _drain(self, block: bool) -> list[tuple]:
        cmds = []
        while block:  # idle: wait for work, keeping tensor-parallel ranks' collectives from timing out
            try:
                cmds.append(self._commands.get(timeout=KEEPALIVE_S))
                break
            except queue.Empty:
                keepalive = getattr(self.engine, "keepalive", None)
                if keepalive is not None:
                    keepalive()
        while True:
            try:
                cmds.append(self._commands.get_nowait())
            except queue.Empty:
                return cmds

    def _serve(self) -> None:
        eng = self.engine
        while True:
            aborted: list[str] = []
            refused: list[Output] = []
            for cmd in self._drain(block=not eng.has_unfinished()):
                kind = cmd[0]
                if kind == "stop":
                    for rid in list(self._live):
                        eng.abort(rid)
                    self._live.clear()
                    return
                if kind == "add":
                    _, rid, prompt_ids, params = cmd
                    try:
                        eng.add_request(prompt_ids, params, request_id=rid)
                    except (UserError, ValueError) as e:
                        code = P.PROMPT_TOO_LONG if isinstance(e, PromptTooLong) else P.BAD_REQUEST
                        refused.append(Output(rid, [], True, None, error=str(e), error_code=code))
                        continue
                    self._live.add(rid)
                elif kind == "abort":
                    if cmd[1] in self._live:
                        eng.abort(cmd[1])
                        aborted.append(cmd[1])
                elif kind == "stats":
                    try:
                        result = eng.stats()
                    except Exception as e:  # a stats bug must not kill serving
                        result = e
                    self._call(cmd[1], result)
            outs = refused
            if eng.has_unfinished():
                for o in eng.step():
                    outs.append(Output(o.request_id, list(o.new_token_ids), o.finished, o.finish_reason,
                                       usage_dict(o.usage), logprobs=o.logprobs,
                                       prompt_logprobs=o.prompt_logprobs))
                    if o.finished:
                        self._live.discard(o.request_id)
            for rid in aborted:  # the engine may not report an aborted request again: say it here
                if rid in self._live:
                    self._live.discard(rid)
                    outs.append(Output(rid, [], True, "cancelled"))
            if outs:
                self._call(self._on_outputs, outs)
