"""An in-process engine server (real engine on the tiny checkpoint, real Unix socket) with a fault
injected into serving one request: that request gets an internal_error event, its connection stays
usable, and a stream beside it loses nothing."""

from __future__ import annotations

import asyncio
import threading
from unittest import mock

from inference import protocol as P
from inference.config import EngineConfig
from inference.server.app import EngineServer
from inference.server.listen import claim_socket, release_socket
from tests.support.server import RawConn


def test_a_failure_serving_one_request_never_touches_another(tiny_model, tmp_path):
    cfg = EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=256)
    path = tmp_path / "s.sock"
    sock, lock = claim_socket(path, private_dir=False)

    def make_engine(progress):
        from inference.engine.llm_engine import LLMEngine

        return LLMEngine(cfg, progress=progress)

    server = EngineServer(cfg, {"model": str(tiny_model), "model_id": "tiny", "socket": str(path), "log_file": None},
                          sock, make_engine, 4 << 20)
    real_token_event = P.token_event

    def token_event(rid, token_ids, text):  # a bug that strikes one request's events only
        if rid == "boom":
            raise RuntimeError("injected")
        return real_token_event(rid, token_ids, text)

    seen = {}

    def clients():
        try:
            boom, other = RawConn(path), RawConn(path)
            boom.send({"op": "health", "id": "wait"})
            while boom.event(60)["result"]["status"] != "ready":
                boom.send({"op": "health", "id": "wait"})
            boom.send({"op": "generate", "id": "boom", "prompt_ids": [4, 5], "max_new_tokens": 300,
                       "ignore_eos": True})
            boom.send({"op": "health", "id": "h"})
            boom.until(lambda e: e["id"] == "h")
            # added after it, so each step reports the failing request first
            other.send({"op": "generate", "id": "a", "prompt_ids": [1, 2, 3], "max_new_tokens": 100,
                        "ignore_eos": True})
            seen["other"] = other.until(lambda e: e["event"] in ("done", "error"), timeout=60)
            seen["boom"] = boom.until(lambda e: e["id"] == "boom" and e["event"] in ("done", "error"))
            boom.send({"op": "stats", "id": "s"})
            seen["stats"] = boom.until(lambda e: e["id"] == "s")[-1]["result"]
        finally:
            RawConn(path).send({"op": "shutdown"})

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    try:
        with mock.patch.object(P, "token_event", token_event):
            code = asyncio.run(server.run())  # the main thread: the server installs signal handlers
    finally:
        release_socket(path, None, lock)
    thread.join(30)
    assert code == 0
    other, boom = seen["other"], seen["boom"]
    assert other[-1]["event"] == "done"
    assert other[-1]["usage"]["completion_tokens"] == sum(len(e["token_ids"]) for e in other[:-1]) == 100
    assert boom[-1]["event"] == "error" and boom[-1]["code"] == "internal_error", boom[-1]
    assert "RuntimeError: injected" in boom[-1]["message"]
    assert seen["stats"]["running"] == 0 and seen["stats"]["kv_blocks_used"] == 0  # aborted, blocks freed
