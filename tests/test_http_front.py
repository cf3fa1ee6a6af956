"""`serve --http` without a model: address parsing, the key policy, a taken port (one `error:` line, exit 2),
and the 503 a client gets while the model loads (the front on a real loopback socket, the server still
loading: the only state here that a real server passes through too fast to catch)."""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace

import aiohttp
import pytest

from inference.entrypoints.cli import main
from inference.errors import UserError
from inference.server.http_bind import bind, check_key_policy, parse_address


@pytest.mark.parametrize("spec, want", [("8000", ("127.0.0.1", 8000)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                        ("[::1]:0", ("::1", 0)), ("localhost:65535", ("localhost", 65535))])
def test_addresses(spec, want):
    assert parse_address(spec) == want


@pytest.mark.parametrize("spec", ["", "abc", "80000", ":8000", "host:", "-1"])
def test_bad_addresses_say_what_to_write(spec):
    with pytest.raises(UserError, match="PORT or HOST:PORT"):
        parse_address(spec)


def test_a_key_is_required_off_loopback():
    check_key_policy("127.0.0.1", None, False)
    check_key_policy("localhost", None, False)
    check_key_policy("0.0.0.0", "k", False)
    check_key_policy("0.0.0.0", None, True)
    with pytest.raises(UserError, match="--api-key KEY .* or pass --insecure"):
        check_key_policy("0.0.0.0", None, False)
    with pytest.raises(UserError, match="the API key is empty"):
        check_key_policy("127.0.0.1", " ", False)


def test_serve_refuses_bad_http_flags_in_one_line(capsys, tiny_model, monkeypatch, tmp_path):
    monkeypatch.delenv("QWEN_CHAT_API_KEY", raising=False)
    base = ["serve", "--model", str(tiny_model), "--device", "cpu", "--socket", str(tmp_path / "s.sock")]
    taken = socket.create_server(("127.0.0.1", 0))
    cases = [(["--http", "0.0.0.0:0"], "reachable from other machines"),
             (["--api-key", "k"], "apply to --http"),
             (["--http", f"127.0.0.1:{taken.getsockname()[1]}"], "cannot listen on 127.0.0.1:")]
    try:
        for extra, words in cases:
            assert main([*base, *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    finally:
        taken.close()
    assert not (tmp_path / "s.sock").exists()  # the Unix socket claimed before the failing bind is given back


def test_serve_flags_are_never_abbreviated(capsys, tiny_model):
    with pytest.raises(SystemExit) as e:  # `--insec` must not pass for --insecure
        main(["serve", "--model", str(tiny_model), "--http", "0.0.0.0:0", "--insec"])
    assert e.value.code == 2 and "unrecognized arguments: --insec" in capsys.readouterr().err


def test_while_loading_every_route_answers_503_with_progress():
    from inference.server.http import HttpFront

    loading = SimpleNamespace(status="loading", progress={"done": 1, "total": 3, "what": "shard"},
                              info={"model_id": "m", "model": "/m"}, started=0.0, max_model_len=None)

    async def go():
        sock, url = bind("127.0.0.1", 0)
        front = HttpFront(loading, sock, None, url)
        await front.start()
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/health") as r:
                    health = (r.status, await r.json())
                async with s.post(url + "/v1/chat/completions", json={"messages": []}) as r:
                    chat = (r.status, await r.json())
        finally:
            await front.stop(1.0)
        return health, chat

    health, chat = asyncio.run(go())
    assert health == (503, {"status": "loading", "model": "m", "progress": loading.progress})
    assert chat[0] == 503 and chat[1]["error"]["code"] == "model_loading", chat
    assert "loading the model (shard 1/3)" in chat[1]["error"]["message"]
    assert json.dumps(chat[1]["error"]["type"]) == '"server_error"'
