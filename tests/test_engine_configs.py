"""One engine per configuration (issue 31, item 5): asking for other options than the running engine's
starts the engine asked for (a socket per configuration) instead of silently using the other one; an
explicit --socket to an engine of another configuration is refused, naming what runs there and how to
stop it; health reports what the engine really runs (a quantized checkpoint's scheme, the real device
and dtype). Real servers on the tiny checkpoint."""

from __future__ import annotations

import os
from types import SimpleNamespace
from unittest import mock

import pytest

from inference.client import launcher
from inference.client.paths import default_socket_path, engine_name
from inference.client.stop import stop_main
from inference.errors import UserError
from inference.model_path import model_id
from inference.quant.cli import main as quantize_main
from tests.support.server import start_server, stop_server, wait_ready
from tui.engine_link import EngineLink, EngineOptions

CPU = {"device": "cpu", "dtype": "float32", "extra_args": ("--num-kv-blocks", "64")}


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory):
    """A float32 engine and a w8a16 one of the same checkpoint, both started by the launcher."""
    run = tmp_path_factory.mktemp("run")
    with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(run), "OMP_NUM_THREADS": "1"}):
        out = SimpleNamespace(run=run, plain=None, quant=None)
        try:
            out.plain = launcher.ensure_server(str(tiny_model), timeout=120, **CPU)
            out.quant = launcher.ensure_server(str(tiny_model), quant="w8a16", timeout=120, **CPU)
            yield out
        finally:
            for path in (out.plain, out.quant):
                if path is not None and launcher.probe(path) is not None:
                    stop_main(["--socket", str(path)])


def test_names_carry_the_options_that_differ_from_the_defaults(monkeypatch, tmp_path):
    assert engine_name("demo") == "demo"
    assert engine_name("demo", tp=2, dtype="float16", device="cuda", quant="w8a16") == \
        "demo+tp2+cuda+float16+w8a16"
    run = tmp_path / ("d" * (105 - len(f"{tmp_path}//qwen-chat/demo+123456.sock")))
    run.mkdir()  # room for a hash, not for every option
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    long = default_socket_path("demo", tp=2, dtype="float16", device="cuda", quant="w8a16")
    assert len(str(long)) <= 107 and long.name.startswith("demo+") and long.name.count("+") == 1
    assert long != default_socket_path("demo", tp=2, dtype="float16", device="cuda")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    link = EngineLink(EngineOptions(model="demo", quant="w8a16", device="cuda"))
    assert link.socket_path == str(tmp_path / "qwen-chat" / "demo+cuda+w8a16.sock")
    assert EngineLink(EngineOptions(model="demo")).socket_path == str(tmp_path / "qwen-chat" / "demo.sock")


def test_other_options_start_the_engine_asked_for(engines, tiny_model):
    assert engines.plain != engines.quant
    assert engines.quant.name == f"{model_id(str(tiny_model))}+cpu+float32+w8a16.sock"
    plain, quant = launcher.probe(engines.plain), launcher.probe(engines.quant)
    assert plain["pid"] != quant["pid"]
    assert plain["quant"] is None and quant["quant"] == "w8a16"
    assert quant["device"] == plain["device"] == "cpu" and quant["dtype"] == plain["dtype"] == "float32"
    with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(engines.run)}):  # each reused by its options
        assert launcher.ensure_server(str(tiny_model), **CPU) == engines.plain
        assert launcher.ensure_server(str(tiny_model), quant="w8a16", **CPU) == engines.quant


def test_an_engine_of_another_configuration_on_the_socket_is_refused(engines, tiny_model):
    with pytest.raises(UserError) as e:
        launcher.ensure_server(str(tiny_model), quant="w8a16", socket=engines.plain, **CPU)
    msg = str(e.value)
    assert "cpu, float32, no quant, tp 1, not --quant w8a16" in msg
    assert f"qwen-chat stop --socket {engines.plain}" in msg
    with pytest.raises(UserError, match="not --dtype bfloat16"):
        launcher.ensure_server(str(tiny_model), dtype="bfloat16", socket=engines.plain)
    with pytest.raises(UserError, match="not --tp 2"):
        launcher.ensure_server(str(tiny_model), tp=2, socket=engines.plain)


def test_health_reports_a_quantized_checkpoints_scheme(tiny_model, tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("q")  # short: the socket path must fit in 107 bytes
    qdir = tmp_path / "tiny-w8a16"
    assert quantize_main(["--model", str(tiny_model), "--out", str(qdir), "--scheme", "w8a16",
                          "--device", "cpu"]) == 0
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = default_socket_path(model_id(str(qdir)), device="cpu", dtype="float32")
    log = tmp_path / "serve.log"
    proc = start_server(qdir, None, log=log)  # `serve` without --socket: the same name as the launcher's
    try:
        health = wait_ready(path, proc, log)
        assert health["quant"] == "w8a16" and health["device"] == "cpu" and health["dtype"] == "float32"
        assert launcher.ensure_server(str(qdir), device="cpu", dtype="float32") == path
        assert launcher.probe(path)["pid"] == proc.pid
    finally:
        stop_server(proc)


def test_stop_model_stops_every_configuration(engines, tiny_model, capsys):
    with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(engines.run)}):
        assert stop_main(["--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert out.count("stopped the engine server") == 2, out
    assert launcher.probe(engines.plain) is None and launcher.probe(engines.quant) is None
