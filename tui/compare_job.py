"""One turn of the compare view: the user's message goes to both engines, each reply streams in its own
worker (`SideStream`), and the pair is compared with `inference.compare.metrics` once both ended.

`CompareJob.run` (a worker) makes sure of both engines, saves the user's message, starts the kept reply
(A, the main engine: a `messages` row) and the alternative (B: an `alternatives` row), and posts
`PairStarted`; the screen then starts one `SideStream` worker per column. Either side failing, stopping
or never starting leaves the other streaming; its column shows the error line.
"""

from __future__ import annotations

import asyncio
import uuid

from textual.message import Message

from inference.compare.metrics import agreement, first_difference
from sessions.prompt import build_messages, sampling_from
from sessions.records import DEFAULT_TITLE, title_from
from tui.reply import ENGINE_ERRORS, NOT_RUNNING, EngineDown, ReplyStream, UserSaved

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


class SideStream(ReplyStream):
    """One column's reply: reads the engine's token events, saves the row, posts `SideDelta` / `SideFinished`."""

    FLUSH_EMPTY = True  # the column's token count and rate move even without new text

    def __init__(self, job: CompareJob, side: str, link, row_id: int, prompt: list[dict], sampling: dict):
        self.job, self.side, self.link, self.row_id = job, side, link, row_id
        self.prompt, self.sampling = prompt, sampling
        self.store = job.store
        self.stop_requested = job.stop_requested

    def save(self) -> None:
        if self.side == "a":
            self.store.update_reply(self.row_id, self.content, self.ids)
        else:
            self.store.update_alternative(self.row_id, self.content, self.ids)

    def finish(self) -> None:
        kept = self.store.finish_reply if self.side == "a" else self.store.finish_alternative
        record = kept(self.row_id, self.content, self.ids, status=self.status, stats=self.stats)
        self.job.screen.post_message(SideFinished(self.side, record, self.status, self.stats, self.error,
                                                  self.ids, self.offsets))

    def down(self) -> None:
        if self.side == "a":
            self.job.screen.post_message(EngineDown())
        else:
            self.job.comparison.state = "down"

    def died(self, reason) -> str:
        return super().died(reason) if self.side == "a" else f"engine B stopped ({reason})"

    async def run(self, error: str = "") -> None:
        """Stream the reply; with `error` (no engine for this side), only record the failed reply."""
        await self.read(self.link, dict(messages=self.prompt, session=self.job.session_id,
                                        request_id=uuid.uuid4().hex, history="trim", **self.sampling), error)

    def flush(self, now: float) -> None:
        first_at, ids = self.first_at, self.ids
        ttft = None if first_at is None else 1000 * (first_at - self.start)
        rate = (len(ids) - 1) / (now - first_at) if first_at and now > first_at and len(ids) > 1 else None
        self.job.screen.post_message(SideDelta(self.side, self.pending, len(ids), ttft, rate))
