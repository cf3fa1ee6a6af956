"""One turn of the compare view: the user's message goes to both engines, each reply streams in its own
worker (`SideStream`), and the pair is compared with `inference.compare.metrics` once both ended.

`CompareJob.run` (a worker) makes sure of both engines, saves the user's message, starts the kept reply
(A, the main engine: a `messages` row) and the alternative (B: an `alternatives` row), and posts
`PairStarted`; the screen then starts one `SideStream` worker per column. Either side failing, stopping
or never starting leaves the other streaming; its column shows the error line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing

from textual.message import Message

from inference.compare.metrics import agreement, first_difference
from inference.protocol import DISCONNECTED
from sessions.prompt import build_messages, sampling_from
from sessions.records import DEFAULT_TITLE, title_from
from tui.reply import DIED, ENGINE_ERRORS, FLUSH_S, NOT_RUNNING, SAVE_S, EngineDown, UserSaved, usage_stats

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0}


class PairStarted(Message):
    """Both rows exist (`reply`: A's messages row, `alt`: B's alternatives row); `ready`: which sides have an
    engine ({"a": bool, "b": bool}); `errors`: the line of a side that has none."""

    def __init__(self, job, reply, alt, ready: dict, errors: dict):
        super().__init__()
        self.job, self.reply, self.alt, self.ready, self.errors = job, reply, alt, ready, errors


class SideDelta(Message):
    def __init__(self, side: str, text: str, tokens: int, ttft_ms: float | None, tok_s: float | None):
        super().__init__()
        self.side, self.text, self.tokens, self.ttft_ms, self.tok_s = side, text, tokens, ttft_ms, tok_s


class SideFinished(Message):
    """`offsets[i]`: the length of the text before token i (where a divergence at token i starts)."""

    def __init__(self, side: str, record, status: str, stats: dict, error: str, ids: list[int],
                 offsets: list[int]):
        super().__init__()
        self.side, self.record, self.status, self.stats, self.error = side, record, status, stats, error
        self.ids, self.offsets = ids, offsets


def compare_pair(a_ids: list[int], b_ids: list[int]) -> tuple[int | None, float]:
    """(first differing token index or None, token agreement): `qwen-chat compare`'s own metrics."""
    return first_difference(a_ids, b_ids), agreement(a_ids, b_ids)


class CompareJob:
    """Send `user_text` (None: regenerate the last reply) to engines A and B in `session_id`."""

    def __init__(self, screen, comparison, session_id: str, user_text: str | None = None, user_box=None):
        self.screen, self.app, self.store = screen, screen.app, screen.app.store
        self.comparison = comparison
        self.session_id, self.user_text, self.user_box = session_id, user_text, user_box
        self.sides: dict[str, SideStream] = {}
        self.stop_requested = False

    def stop(self) -> None:
        self.stop_requested = True
        for side in self.sides.values():
            side.stop_requested = True

    async def run(self) -> None:
        ready_a, ready_b = await asyncio.gather(self._ensure_a(), self.comparison.ensure(self.screen))
        if self.user_text is not None:
            ids = None
            for ok, link in ((ready_a, self.app.link), (ready_b, self.comparison.link)):
                if ok and ids is None:
                    try:
                        ids = await link.tokenize(self.user_text)
                    except ENGINE_ERRORS:
                        pass
            record = self.store.add_message(self.session_id, "user", self.user_text, ids)
            if self.store.get_session(self.session_id).title == DEFAULT_TITLE:
                self.store.update_session(self.session_id, title=title_from(self.user_text))
            self.screen.post_message(UserSaved(self.user_box, record))
        session = self.store.get_session(self.session_id)
        prompt = build_messages(session, self.store.messages(self.session_id))
        sampling = sampling_from(session) | (GREEDY if self.comparison.greedy else {})
        label_a = "A: " + self.screen.main_label()
        label_b = "B: " + self.comparison.label
        reply = self.store.begin_reply(self.session_id)
        alt = self.store.begin_alternative(reply.id, label_b, label_a)
        errors = {"a": "" if ready_a else NOT_RUNNING,
                  "b": "" if ready_b else f"engine B is not running: {self.comparison.error or 'it did not start'}"}
        for side, link, row in (("a", self.app.link, reply), ("b", self.comparison.link, alt)):
            self.sides[side] = SideStream(self, side, link, row.id, prompt, sampling)
        self.screen.post_message(PairStarted(self, reply, alt, {"a": ready_a, "b": ready_b}, errors))

    async def _ensure_a(self) -> bool:
        try:
            return await self.app.ensure_engine()
        except ENGINE_ERRORS:
            self.screen.post_message(EngineDown())
            return False


class SideStream:
    """One column's reply: reads the engine's token events, saves the row, posts `SideDelta` / `SideFinished`."""

    def __init__(self, job: CompareJob, side: str, link, row_id: int, prompt: list[dict], sampling: dict):
        self.job, self.side, self.link, self.row_id = job, side, link, row_id
        self.prompt, self.sampling = prompt, sampling
        self.store = job.store
        self.stop_requested = job.stop_requested

    def _save(self, content: str, ids: list[int]) -> None:
        if self.side == "a":
            self.store.update_reply(self.row_id, content, ids)
        else:
            self.store.update_alternative(self.row_id, content, ids)

    def _finish(self, content: str, ids: list[int], status: str, stats: dict):
        if self.side == "a":
            return self.store.finish_reply(self.row_id, content, ids, status=status, stats=stats)
        return self.store.finish_alternative(self.row_id, content, ids, status=status, stats=stats)

    def _down(self) -> None:
        if self.side == "a":
            self.job.screen.post_message(EngineDown())
        else:
            self.job.comparison.state = "down"

    async def run(self, error: str = "") -> None:
        """Stream the reply; with `error` (no engine for this side), only record the failed reply."""
        content, ids, offsets, pending = "", [], [], ""
        stats: dict = {}
        status = "error" if error else "complete"
        start = last_flush = last_save = time.monotonic()
        first_at = None
        try:
            if not error:
                async with self.link.client() as client, aclosing(client.generate(
                        messages=self.prompt, session=self.job.session_id, request_id=uuid.uuid4().hex,
                        history="trim", **self.sampling)) as events:
                    async for ev in events:
                        if self.stop_requested:
                            status = "interrupted"
                            break
                        kind = ev.get("event")
                        if kind == "token":
                            new = list(ev.get("token_ids", ()))
                            offsets += [len(content)] * len(new)
                            ids += new
                            content += ev.get("text", "")
                            pending += ev.get("text", "")
                            now = time.monotonic()
                            first_at = first_at or now
                            if now - last_flush >= FLUSH_S:
                                self._delta(pending, ids, start, first_at, now)
                                pending, last_flush = "", now
                            if now - last_save >= SAVE_S:
                                self._save(content, ids)
                                last_save = now
                        elif kind == "done":
                            stats = usage_stats(ev)
                            if ev.get("finish_reason") == "cancelled":
                                status = "interrupted"
                        elif kind == "error":
                            status, error = "error", str(ev.get("message") or "engine error")
                            if ev.get("code") == DISCONNECTED:
                                self._down()
                                error = DIED.format(error) if self.side == "a" else f"engine B stopped ({error})"
        except asyncio.CancelledError:
            status = "interrupted"
        except ValueError as e:
            status, error = "error", str(e)
        except ENGINE_ERRORS as e:
            self._down()
            status, error = "error", DIED.format(e) if self.side == "a" else f"engine B stopped ({e})"
        except Exception as e:  # noqa: BLE001 - the column says so and the other goes on
            status, error = "error", f"the reply failed: {type(e).__name__}: {e}"
        finally:
            if pending:
                self._delta(pending, ids, start, first_at, time.monotonic())
            if error:
                stats = {**stats, "error": error}
            record = self._finish(content, ids, status, stats)
            self.job.screen.post_message(SideFinished(self.side, record, status, stats, error, ids, offsets))

    def _delta(self, text: str, ids: list[int], start: float, first_at: float | None, now: float) -> None:
        ttft = None if first_at is None else 1000 * (first_at - start)
        rate = (len(ids) - 1) / (now - first_at) if first_at and now > first_at and len(ids) > 1 else None
        self.job.screen.post_message(SideDelta(self.side, text, len(ids), ttft, rate))
