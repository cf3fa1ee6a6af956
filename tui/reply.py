"""One reply, streamed by one worker: stores the turn, reads token events, posts UI messages up.

Text goes up in batches (at most ~30 messages a second, whatever the token rate) and the reply is
saved every second while it streams, so neither the UI nor a crash loses more than that.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing

from textual.message import Message

from inference.client import EngineError, EngineUnavailable
from inference.protocol import DISCONNECTED
from sessions.prompt import build_messages, sampling_from
from sessions.records import DEFAULT_TITLE, title_from

FLUSH_S = 1 / 30  # UI batch interval
SAVE_S = 1.0  # database save interval while streaming
ENGINE_ERRORS = (EngineUnavailable, EngineError, OSError, asyncio.TimeoutError)
NOT_RUNNING = ("the engine is not running: your message is saved; ctrl+r asks again "
               "(and starts the engine)")
DIED = ("the engine stopped mid-reply ({}); the partial reply is kept and your next message "
        "restarts the engine")


class EngineDown(Message):
    """The engine stopped answering during a reply; the app marks it down (the next message restarts it)."""


class UserSaved(Message):
    def __init__(self, box, record):
        super().__init__()
        self.box, self.record = box, record


class ReplyStarted(Message):
    def __init__(self, record, session_id: str):
        super().__init__()
        self.record, self.session_id = record, session_id


class ReplyDelta(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text


class ReplyFinished(Message):
    """`record` is None when no reply was started (engine unavailable)."""

    def __init__(self, record, status: str, stats: dict, error: str, session_id: str):
        super().__init__()
        self.record, self.status, self.stats, self.error = record, status, stats, error
        self.session_id = session_id


class ReplyStream:
    """The loop that reads one reply's token events: keeps `content`, `ids`, `offsets` (`offsets[i]`: the
    length of the text before token i), `status`, `error` and `stats`, and calls the hooks below.

    Text goes up through `flush` in batches of at most FLUSH_S; the reply is saved through `save` every
    SAVE_S while it streams and through `finish` once, whatever happened."""

    FLUSH_EMPTY = False  # call `flush` on time even with no new text (the token count moved)

    stop_requested = False

    def flush(self, now: float) -> None:
        """Post `pending` (the text since the last flush) up."""

    def save(self) -> None:
        """Save the partial reply."""

    def down(self) -> None:
        """The engine stopped answering."""

    def died(self, reason) -> str:
        """The error line of a reply whose engine stopped (`reason`)."""
        return DIED.format(reason)

    def finish(self) -> None:
        """Save the ended reply and post it up."""

    async def read(self, link, request: dict, error: str = "") -> None:
        """Stream the reply to `request` (`generate`'s arguments) from `link`, then `finish`; with `error`
        (no engine), only record the failed reply."""
        self.content, self.ids, self.offsets, self.pending = "", [], [], ""
        self.stats: dict = {}
        self.status, self.error = ("error" if error else "complete"), error
        self.start = last_flush = last_save = time.monotonic()
        self.first_at: float | None = None
        try:
            if not error:
                async with link.client() as client, aclosing(client.generate(**request)) as events:
                    async for ev in events:
                        if self.stop_requested:
                            self.status = "interrupted"  # closing the stream cancels the request on the server
                            break
                        kind = ev.get("event")
                        if kind == "token":
                            new, text = list(ev.get("token_ids", ())), ev.get("text", "")
                            self.offsets += [len(self.content)] * len(new)
                            self.ids += new
                            self.content += text
                            self.pending += text
                            now = time.monotonic()
                            self.first_at = self.first_at or now
                            if (self.pending or self.FLUSH_EMPTY) and now - last_flush >= FLUSH_S:
                                self.flush(now)
                                self.pending, last_flush = "", now
                            if now - last_save >= SAVE_S:
                                self.save()
                                last_save = now
                        elif kind == "done":
                            self.stats = usage_stats(ev)
                            if ev.get("finish_reason") == "cancelled":
                                self.status = "interrupted"
                        elif kind == "error":
                            self.status, self.error = "error", str(ev.get("message") or "engine error")
                            if ev.get("code") == DISCONNECTED:
                                self.down()
                                self.error = self.died(self.error)
        except asyncio.CancelledError:
            self.status = "interrupted"  # leaving the stream cancels the request on the server
        except ValueError as e:  # a request the client refuses to send (bad setting)
            self.status, self.error = "error", str(e)
        except ENGINE_ERRORS as e:
            self.down()
            self.status, self.error = "error", self.died(e)
        except Exception as e:  # noqa: BLE001 - whatever it was, the reply says so and the app goes on
            self.status, self.error = "error", f"the reply failed: {type(e).__name__}: {e}"
        finally:
            if self.pending:
                self.flush(time.monotonic())
            if self.error:
                self.stats = {**self.stats, "error": self.error}  # the reason is saved with the reply
            self.finish()


class ReplyJob(ReplyStream):
    """Send `user_text` (None: regenerate from the stored history) in `session_id` and stream the reply."""

    def __init__(self, screen, session_id: str, user_text: str | None = None, user_box=None):
        self.screen = screen
        self.app = screen.app
        self.store = screen.app.store
        self.link = screen.app.link
        self.session_id = session_id
        self.user_text = user_text
        self.user_box = user_box
        self.request_id = uuid.uuid4().hex
        self.stop_requested = False

    def stop(self) -> None:
        """Ask the stream to end at the next event (the worker is cancelled too, for a silent engine)."""
        self.stop_requested = True

    def post(self, message: Message) -> None:
        self.screen.post_message(message)

    async def run(self) -> None:
        ok, ids, cancelled = False, None, False
        try:
            ok = await self.app.ensure_engine()
            if ok and self.user_text is not None:
                try:
                    ids = await self.link.tokenize(self.user_text)
                except ENGINE_ERRORS:
                    ok = await self.app.ensure_engine(restart=True)
                    ids = await self.link.tokenize(self.user_text) if ok else None
        except asyncio.CancelledError:
            ok, cancelled = False, True
        except ENGINE_ERRORS:
            self.post(EngineDown())
            ok = False
        if self.user_text is not None:
            # the user's message is kept whether or not the engine answers
            record = self.store.add_message(self.session_id, "user", self.user_text, ids)
            if self.store.get_session(self.session_id).title == DEFAULT_TITLE:
                self.store.update_session(self.session_id, title=title_from(self.user_text))
            self.post(UserSaved(self.user_box, record))
        if cancelled:
            self.post(ReplyFinished(None, "interrupted", {}, "", self.session_id))
        elif not ok:
            self.post(ReplyFinished(None, "error", {}, NOT_RUNNING, self.session_id))
        else:
            await self.stream()

    async def stream(self) -> None:
        session = self.store.get_session(self.session_id)
        prompt = build_messages(session, self.store.messages(self.session_id))
        self.reply = self.store.begin_reply(self.session_id)
        self.post(ReplyStarted(self.reply, self.session_id))
        await self.read(self.link, dict(messages=prompt, session=self.session_id, request_id=self.request_id,
                                        history="trim", **sampling_from(session)))

    def flush(self, now: float) -> None:
        self.post(ReplyDelta(self.pending))

    def save(self) -> None:
        self.store.update_reply(self.reply.id, self.content, self.ids)

    def down(self) -> None:
        self.post(EngineDown())

    def finish(self) -> None:
        record = self.store.finish_reply(self.reply.id, self.content, self.ids, status=self.status,
                                         stats=self.stats)
        self.post(ReplyFinished(record, self.status, self.stats, self.error, self.session_id))


def usage_stats(done_event: dict) -> dict:
    """The reply stats kept with the message: ttft_ms, decode_tok_s, prompt/cached/completion tokens, and
    dropped_messages when the engine left the oldest turns out to fit its context window."""
    usage = done_event.get("usage") or done_event
    keys = ("ttft_ms", "decode_tok_s", "prompt_tokens", "cached_tokens", "completion_tokens", "dropped_messages")
    return {k: usage[k] for k in keys if isinstance(usage.get(k), (int, float))}
