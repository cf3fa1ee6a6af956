"""Shared fixtures: tiny checkpoints in the exact published layout, written once per test session."""

from __future__ import annotations

import pytest
import torch

from inference.client.stop import stop_server
from inference.models.demo import write_checkpoint


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the lent GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """bf16, two shards with an index, the real qwen.tiktoken; 8 heads (tp 1/2/4/8), seq_length 256."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen-tiny", seed=0, seq_length=256)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    """A float32 CPU engine over tiny_model, shared by tests that only read from it."""
    from inference.config import EngineConfig
    from inference.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=256))


@pytest.fixture(scope="module")
def tui_server(tiny_model, tmp_path_factory):
    """An engine server on tiny_model (CPU, float32) for the app's pilot tests of one module."""
    from types import SimpleNamespace

    from tests.support.app import start_server
    from tests.support.server import stop_server

    tmp = tmp_path_factory.mktemp("tui-server")
    sock, log = tmp / "engine.sock", tmp / "engine.log"
    proc = start_server(tiny_model, sock, log)
    try:
        yield SimpleNamespace(sock=sock, model=str(tiny_model), log=log, proc=proc)
    finally:
        assert stop_server(proc) == 0, log.read_text()[-2000:]


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private $XDG_RUNTIME_DIR for the engine servers an app test starts; every one is stopped afterwards."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield run
    for sock in run.glob("qwen-chat/*.sock"):
        stop_server(sock, timeout=20)
