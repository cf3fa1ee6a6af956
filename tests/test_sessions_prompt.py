"""Stored sessions -> protocol messages (token ids verbatim) and sampling fields."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from sessions.prompt import build_messages, sampling_from
from sessions.store import SessionStore


def test_build_messages_keeps_token_ids_and_skips_errors(tmp_path):
    with SessionStore(tmp_path / "p.db") as st:
        s = st.create_session(system_prompt="You are terse.", settings={"temperature": 0.0, "top_k": 5})
        st.add_message(s.id, "user", "one", [1, 2])
        st.add_message(s.id, "assistant", "1", [3])
        st.add_message(s.id, "user", "two", [4])
        r = st.begin_reply(s.id)
        st.finish_reply(r.id, "partial err", [5], status="error")
        st.add_message(s.id, "user", "three", [6])
        r = st.begin_reply(s.id)
        st.finish_reply(r.id, "cut sh", [7, 8], status="interrupted")
        st.add_message(s.id, "user", "untokenized")
        live = st.begin_reply(s.id)  # still streaming: not part of the next prompt
        st.update_reply(live.id, "x", [9])
        msgs = build_messages(st.get_session(s.id), st.messages(s.id))
    assert msgs == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "one", "token_ids": [1, 2]},
        {"role": "assistant", "content": "1", "token_ids": [3]},
        {"role": "user", "content": "two", "token_ids": [4]},
        {"role": "user", "content": "three", "token_ids": [6]},
        {"role": "assistant", "content": "cut sh", "token_ids": [7, 8]},
        {"role": "user", "content": "untokenized"},
    ]
    assert sampling_from(s) == {"temperature": 0.0, "top_p": 0.8, "top_k": 5, "repetition_penalty": 1.1,
                                "max_new_tokens": 512}


def test_no_system_message_when_prompt_empty(tmp_path):
    with SessionStore(tmp_path / "p.db") as st:
        s = st.create_session(system_prompt="")
        st.add_message(s.id, "user", "hi", [1])
        assert build_messages(s, st.messages(s.id)) == [{"role": "user", "content": "hi", "token_ids": [1]}]


def test_sessions_package_is_stdlib_only():
    """sessions/ must not import torch or the inference engine (the TUI loads it)."""
    allowed_local = {"sessions"}
    for path in Path(__file__).resolve().parents[1].joinpath("sessions").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed_local or top in sys.stdlib_module_names, (path.name, name)
