"""Snapshots (pytest-textual-snapshot) of the main screens with fixed content: the chat, settings,
help, engine start and engine failure screens. The app runs without an engine here (nothing in view
depends on time, ids or a model's output); `pytest --snapshot-update` rewrites them after a
deliberate change of the look."""

from __future__ import annotations

import pytest

from sessions import SessionStore
from tests.support.app import make_app
from tui.screens.engine_start import EngineFailedScreen, EngineStartScreen

SIZE = (110, 34)
REPLY = """Use `sorted()` for a new list, or `list.sort()` to sort in place:

```python
names = ["carol", "alice", "bob"]
print(sorted(names))           # ['alice', 'bob', 'carol']
names.sort(key=len, reverse=True)
```

Both are **stable**, so equal keys keep their order."""


@pytest.fixture
def snapshot_app(tmp_path):
    db = tmp_path / "sessions.db"
    with SessionStore(db) as store:
        other = store.create_session(title="Plans for Saturday")
        store.add_message(other.id, "user", "Any ideas for a rainy Saturday?")
        s = store.create_session(title="Sorting in Python")
        store.add_message(s.id, "user", "How do I sort a list in Python?")
        store.add_message(s.id, "assistant", REPLY, stats={
            "completion_tokens": 58, "decode_tok_s": 31.5, "ttft_ms": 120.0, "cached_tokens": 16})
        store.add_message(s.id, "user", "And a dict by value?")
        store.add_message(s.id, "assistant", "Sort its items with a key:", status="interrupted")
        sid = s.id

    def build():
        return make_app(db, model="demo", session_id=sid, start_engine=False)

    return build


def test_chat_screen(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=SIZE)


def test_settings_screen(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), press=["ctrl+s"], terminal_size=SIZE)


def test_help_screen(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), press=["f1"], terminal_size=SIZE)


def test_engine_start_screen(snap_compare, snapshot_app):
    async def loading(pilot):
        screen = EngineStartScreen("14b")
        await pilot.app.push_screen(screen)
        screen.set_progress(3, 8, "loading model-00003-of-00008.safetensors")

    assert snap_compare(snapshot_app(), run_before=loading, terminal_size=SIZE)


def test_engine_failed_screen(snap_compare, snapshot_app):
    async def failed(pilot):
        log = ["2026-01-01 00:00:00 INFO inference.server: loading /models/qwen-14b",
               "error: CUDA out of memory: 27.1 GiB needed, 23.6 GiB free on cuda:0; try --quant w8a16 or --tp 2"]
        await pilot.app.push_screen(EngineFailedScreen(
            "the engine server exited with code 2 while starting", log,
            "Check the model ('14b'), --device and --dtype. Run `qwen-chat serve --model 14b` in a terminal "
            "to see the whole output, then press r to retry.", "/run/user/1000/qwen-chat/14b.log"))

    assert snap_compare(snapshot_app(), run_before=failed, terminal_size=SIZE)
