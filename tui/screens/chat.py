"""The chat screen: session sidebar, the conversation, the prompt input and the status bar."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from tui.reply import ReplyDelta, ReplyFinished, ReplyJob, ReplyStarted, UserSaved
from tui.screens.chat_compare import CompareMixin
from tui.screens.dialogs import Confirm, TextPrompt
from tui.screens.help import HelpScreen
from tui.screens.settings import SettingsScreen
from tui.widgets.compare_pair import ComparePair
from tui.widgets.message import MessageBox, code_blocks
from tui.widgets.message_view import MessageView
from tui.widgets.prompt_input import PromptInput
from tui.widgets.sidebar import Sidebar
from tui.widgets.status_bar import StatusBar


class ChatScreen(CompareMixin, Screen):
    BINDINGS = [
        Binding("escape", "stop", "Stop reply"),
        Binding("ctrl+n", "new_session", "New chat"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+o", "copy_reply", "Copy reply"),
        Binding("ctrl+g", "copy_code", "Copy code"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+t", "fork", "Fork chat"),
        Binding("f2", "rename_session", "Rename"),
        Binding("f8", "delete_session", "Delete chat"),
        Binding("ctrl+f", "search", "Search chats", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False),
        Binding("f3", "compare", "Compare"),
        Binding("f4", "keep('left')", "Keep left reply", show=False),
        Binding("f5", "keep('right')", "Keep right reply", show=False),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, session_id: str):
        super().__init__(id="chat")
        self.session_id = session_id
        self.reply_worker: Worker | None = None
        self.job: ReplyJob | None = None
        self.reply_box: MessageBox | None = None
        self._compare_init()

    @property
    def store(self):
        return self.app.store

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar")
            with Vertical(id="conversation"):
                yield MessageView(id="messages")
                yield Static("", id="compare-bar", markup=False)
                yield PromptInput(id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        await self.open_session(self.session_id)
        self.update_compare_bar()
        self.query_one(PromptInput).focus()

    # -- sessions ---------------------------------------------------------------------------------
    @property
    def streaming(self) -> bool:
        return (self.reply_worker is not None and self.reply_worker.is_running) or self.compare_streaming

    async def open_session(self, session_id: str) -> None:
        if self.streaming:
            await self.stop_reply()
        session = self.store.get_session(session_id)
        self.session_id = session_id
        self.app.current_session_id = session_id
        self.sub_title = session.title
        await self.query_one(MessageView).load_session(self.store, session_id)
        prompts = [m.content for m in self.store.messages(session_id) if m.role == "user"][-100:]
        self.query_one(PromptInput).set_history(prompts)
        await self.query_one(Sidebar).refresh_sessions(self.store, session_id)

    async def refresh_sidebar(self) -> None:
        self.sub_title = self.store.get_session(self.session_id).title
        await self.query_one(Sidebar).refresh_sessions(self.store, self.session_id)

    async def on_sidebar_selected(self, event: Sidebar.Selected) -> None:
        if event.session_id != self.session_id:
            await self.open_session(event.session_id)
        self.query_one(PromptInput).focus()

    async def action_new_session(self) -> None:
        sid = self.app.new_chat()  # an empty chat is reused
        self.query_one("#session-search", Input).value = ""
        await self.open_session(sid)
        self.query_one(PromptInput).focus()

    async def action_fork(self, at: int | None = None) -> None:
        n = self.store.count_messages(self.session_id)
        if not n:
            self.notify("Nothing to fork yet: this chat is empty", severity="warning")
            return
        new = self.store.fork(self.session_id, n - 1 if at is None else at)
        await self.open_session(new.id)
        self.notify(f"Forked into “{new.title}”")

    async def on_message_box_fork_requested(self, event: MessageBox.ForkRequested) -> None:
        await self.action_fork(event.idx)

    def action_rename_session(self) -> None:
        title = self.store.get_session(self.session_id).title

        async def done(new: str | None) -> None:
            if new:
                self.store.update_session(self.session_id, title=new)
                await self.refresh_sidebar()

        self.app.push_screen(TextPrompt("Rename this chat:", title), done)

    def action_delete_session(self) -> None:
        session = self.store.get_session(self.session_id)

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.streaming:
                await self.stop_reply()
            self.store.delete_session(session.id)
            rest = self.store.list_sessions()
            if rest:
                await self.open_session(rest[0].id)
            else:
                await self.action_new_session()
            self.notify(f"Deleted “{session.title}”")

        self.app.push_screen(Confirm(f"Delete the chat “{session.title}” and all its messages?"), done)

    def action_search(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = True
        self.query_one("#session-search", Input).focus()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display

    # -- settings and help ------------------------------------------------------------------------
    def action_settings(self) -> None:
        s = self.store.get_session(self.session_id)

        def done(result) -> None:
            if result is not None:
                system_prompt, settings = result
                self.store.update_session(self.session_id, system_prompt=system_prompt, settings=settings)
                self.notify("Settings saved with this chat")

        self.app.push_screen(SettingsScreen(s.title, s.system_prompt, s.settings), done)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    # -- sending and streaming --------------------------------------------------------------------
    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        await self.send(event.text)

    async def send(self, text: str) -> None:
        """Send `text` (the prompt input already emptied itself and remembered it)."""
        if self.streaming:
            self.notify("A reply is still being written: Esc stops it", severity="warning")
            self.query_one(PromptInput).give_back(text)
            return
        box = await self.query_one(MessageView).add(MessageBox("user", text))
        if self.comparison is not None:
            self.start_compare(text, box)
        else:
            self.start_job(ReplyJob(self, self.session_id, text, box))

    def start_job(self, job: ReplyJob) -> None:
        self.app.update_status(generating=True)
        self.job = job
        self.reply_worker = self.run_worker(job.run(), group="reply", exclusive=True, exit_on_error=False)

    async def action_regenerate(self) -> None:
        if self.streaming:
            self.notify("A reply is still being written: Esc stops it", severity="warning")
            return
        n = self.store.count_messages(self.session_id)
        msgs = self.store.messages(self.session_id, offset=max(0, n - 2))
        if not msgs:
            self.notify("Nothing to regenerate: send a message first", severity="warning")
            return
        last = msgs[-1]
        if last.role == "assistant":
            self.store.truncate(self.session_id, last.idx)
            view = self.query_one(MessageView)
            for box in [*view.boxes(), *view.query(ComparePair)]:
                if box.idx is not None and box.idx >= last.idx:
                    await box.remove()
        if self.comparison is not None:
            self.start_compare(None)
        else:
            self.start_job(ReplyJob(self, self.session_id))

    async def action_stop(self) -> None:
        if self.streaming:
            await self.stop_reply()
        else:
            self.query_one(PromptInput).focus()

    async def stop_reply(self) -> None:
        if self.compare_streaming:
            self.stop_sides()
        worker = self.reply_worker
        if worker is not None and worker.is_running:
            self.job.stop()
            worker.cancel()
        for w in [worker, *self.side_workers.values()]:
            try:
                if w is not None:
                    await w.wait()  # the job saves the partial reply as "interrupted"
            except (WorkerCancelled, WorkerFailed):
                pass

    @on(UserSaved)
    def user_saved(self, event: UserSaved) -> None:
        if event.box is not None:
            event.box.idx, event.box.message_id = event.record.idx, event.record.id
        self.run_worker(self.refresh_sidebar(), group="sidebar", exclusive=True)

    @on(ReplyStarted)
    async def reply_started(self, event: ReplyStarted) -> None:
        if event.session_id != self.session_id:
            return  # the user switched chats meanwhile: the reply is in the database
        record = event.record
        box = MessageBox("assistant", "", idx=record.idx, message_id=record.id, status="streaming")
        self.reply_box = await self.query_one(MessageView).add(box)
        box.start_stream()

    @on(ReplyDelta)
    async def reply_delta(self, event: ReplyDelta) -> None:
        if self.reply_box is not None:
            await self.reply_box.append(event.text)

    @on(ReplyFinished)
    async def reply_finished(self, event: ReplyFinished) -> None:
        box, self.reply_box = self.reply_box, None
        if event.record is not None and box is not None:
            await box.finish(event.status, event.stats, event.error)
        if event.error:
            self.notify(event.error, title="Engine", severity="error", timeout=8)
        if event.status == "interrupted":
            self.notify("Stopped: the partial reply is kept (marked interrupted)")
        if event.stats.get("dropped_messages"):
            self.notify(f"This chat outgrew the model's context window: the oldest {event.stats['dropped_messages']} "
                        "messages were left out of this reply's prompt (they stay in the chat; fork the chat at a "
                        "later message to start afresh)", title="Context", severity="warning", timeout=10)
        self.app.reply_done(event.stats)

    # -- copy -------------------------------------------------------------------------------------
    def _last_reply(self) -> MessageBox | None:
        return self.query_one(MessageView).last_box("assistant")

    def action_copy_reply(self) -> None:
        box = self.focused if isinstance(self.focused, MessageBox) else self._last_reply()
        if box is None:
            self.notify("No message to copy yet", severity="warning")
            return
        box.action_copy()

    def action_copy_code(self) -> None:
        for box in reversed(self.query_one(MessageView).boxes()):
            blocks = code_blocks(box.content) if box.role == "assistant" else []
            if blocks:
                self.app.copy_to_clipboard(blocks[-1])
                self.notify(f"Copied the last code block ({len(blocks[-1].splitlines())} lines)")
                return
        self.notify("No code block in this chat", severity="warning")
