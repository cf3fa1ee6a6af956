"""The chat screen's compare view (mixed into `ChatScreen`): F3 picks engine B, each new message goes to
the main engine (A) and B, two columns stream side by side, and F4 / F5 (or k on a column) keeps a reply.

Messages up (`PairStarted`, `SideDelta`, `SideFinished`, `ComparisonChanged`, `ReplyColumn.KeepRequested`),
calls down; one worker per stream (groups "compare-a" and "compare-b"). Handlers go by name (`on_...`):
Textual's `@on` is not collected from a mixin.
"""

from __future__ import annotations

from dataclasses import replace

from textual.widgets import Static
from textual.worker import Worker

from sessions.records import SessionError
from tui.compare_job import CompareJob, PairStarted, SideDelta, SideFinished, compare_pair
from tui.comparison import Comparison, ComparisonChanged, engine_label
from tui.screens.compare_pick import CompareChoice, ComparePickScreen
from tui.widgets.compare_pair import ComparePair, ReplyColumn
from tui.widgets.message_view import MessageView


class CompareMixin:
    comparison: Comparison | None = None
    pair: ComparePair | None = None  # the pair being streamed (None when it is in another chat)

    def _compare_init(self) -> None:
        self.comparison = None
        self.pair = None
        self.side_workers: dict[str, Worker] = {}
        self.side_done: dict[str, SideFinished] = {}
        self.pair_alt_id: int | None = None

    def main_label(self) -> str:
        return engine_label(self.app.link.info, self.app.options)

    @property
    def compare_streaming(self) -> bool:
        return any(w.is_running for w in self.side_workers.values())

    # -- choosing engine B --------------------------------------------------------------------------
    def action_compare(self) -> None:
        # the main engine's own socket is no second engine: the form starts from its configuration only
        current = self.comparison.options if self.comparison else replace(self.app.options, socket=None)

        def done(choice) -> None:
            if choice == "stop":
                self.action_compare_off()
            elif isinstance(choice, CompareChoice):
                self.start_comparing(choice)

        self.app.push_screen(ComparePickScreen(current, comparing=self.comparison is not None), done)

    def start_comparing(self, choice: CompareChoice) -> None:
        self.comparison = Comparison(choice.options, choice.greedy)
        self.update_compare_bar()
        self.run_worker(self.comparison.ensure(self), group="compare-start", exclusive=True)
        self.notify("Each new message goes to both engines; F4 / F5 keeps the left / right reply",
                    title="Compare")

    def action_compare_off(self) -> None:
        if self.comparison is None:
            self.notify("Not comparing: F3 picks a second engine", severity="warning")
            return
        self.comparison = None
        self.update_compare_bar()
        self.notify("Compare view off: messages go to the main engine only (engine B keeps running: "
                    "`qwen-chat stop` ends it)")

    def update_compare_bar(self) -> None:
        bar = self.query_one("#compare-bar", Static)
        bar.display = self.comparison is not None
        if self.comparison is not None:
            bar.update(f"Compare · A: {self.main_label()} · {self.comparison.status_text()} · "
                       "F4/F5 keep left/right · F3 change/stop")

    def on_comparison_changed(self, _: ComparisonChanged) -> None:
        self.update_compare_bar()

    # -- streaming a pair ---------------------------------------------------------------------------
    def start_compare(self, text: str | None, user_box=None) -> None:
        self.app.update_status(generating=True)
        self.side_done = {}
        self.job = CompareJob(self, self.comparison, self.session_id, text, user_box)
        self.reply_worker = self.run_worker(self.job.run(), group="reply", exclusive=True, exit_on_error=False)

    async def on_pair_started(self, event: PairStarted) -> None:
        self.pair_alt_id = event.alt.id
        self.pair = None
        if event.job.session_id == self.session_id:
            left = ReplyColumn("left", event.alt.chosen_engine, kept=True)
            right = ReplyColumn("right", event.alt.engine)
            self.pair = ComparePair(event.reply.idx, event.reply.id, event.alt.id, left, right)
            await self.query_one(MessageView).add(self.pair)
        for side, stream in event.job.sides.items():
            self.side_workers[side] = self.run_worker(stream.run(event.errors[side]), group=f"compare-{side}",
                                                      exit_on_error=False)
        self.update_compare_bar()

    def on_side_delta(self, event: SideDelta) -> None:
        if self.pair is not None:
            self.pair.column(event.side).append(event.text, event.tokens, event.ttft_ms, event.tok_s)

    def on_side_finished(self, event: SideFinished) -> None:
        self.side_done[event.side] = event
        if self.pair is not None:
            self.pair.column(event.side).finish(event.status, event.stats, event.error, event.record.content)
        if event.error:
            self.notify(event.error, title=f"Engine {event.side.upper()}", severity="error", timeout=8)
        if len(self.side_done) < 2:
            return
        a, b = self.side_done["a"], self.side_done["b"]
        first_diff = agreement = None
        if a.status != "error" and b.status != "error":
            first_diff, agreement = compare_pair(a.ids, b.ids)
        try:
            self.store.set_comparison(self.pair_alt_id, first_diff, agreement)
        except SessionError:  # the chat was deleted meanwhile
            pass
        if self.pair is not None:
            self.pair.show_comparison(first_diff, agreement, a.offsets, b.offsets, len(a.ids), len(b.ids))
        self.update_compare_bar()
        self.app.reply_done(a.stats if a.status != "error" else {})

    def stop_sides(self) -> None:
        if getattr(self, "job", None) is not None:
            self.job.stop()
        for w in self.side_workers.values():
            if w.is_running:
                w.cancel()

    # -- keeping a reply ----------------------------------------------------------------------------
    def _last_pair(self) -> ComparePair | None:
        pairs = list(self.query_one(MessageView).query(ComparePair))
        return pairs[-1] if pairs else None

    def action_keep(self, where: str) -> None:
        pair = self._last_pair()
        if pair is None:
            self.notify("No compared replies in view: F3 starts comparing", severity="warning")
            return
        self.keep(pair, pair.column(where))

    def on_reply_column_keep_requested(self, event: ReplyColumn.KeepRequested) -> None:
        pair = event.column.parent.parent if event.column.parent is not None else None
        if isinstance(pair, ComparePair):
            self.keep(pair, event.column)

    def keep(self, pair: ComparePair, column: ReplyColumn) -> None:
        if column.kept:
            self.notify("The chat already goes on from this reply")
            return
        if pair.streaming:
            self.notify("Both replies must end first (Esc stops them)", severity="warning")
            return
        try:
            self.store.pick_alternative(pair.alt_id)
        except SessionError as e:
            self.notify(str(e), severity="warning", timeout=8)
            return
        for col in (pair.left, pair.right):
            col.kept = col is column
            col.refresh_view()
        self.notify(f"The chat goes on from {column.engine}; the other reply is kept as an alternative")
