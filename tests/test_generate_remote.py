"""`qwen-chat generate --connect` end to end on the tiny checkpoint: it starts a real background server
(or uses the running one), streams the reply, and prints what local `generate` prints (--json too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inference.client.launcher import probe
from inference.client.stop import stop_main
from inference.entrypoints.cli import main as cli_main

pytestmark = pytest.mark.timeout(300)
ENGINE = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "64"]


def run(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "inference", "generate", *argv], capture_output=True, text=True,
                          timeout=240, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def remote(tiny_model, tmp_path_factory):
    """`generate --connect ...` against one server on a private socket, stopped at the end."""
    d = tmp_path_factory.mktemp("remote")
    sock = d / "tiny.sock"

    def go(*argv):
        return run("--connect", "--model", str(tiny_model), "--socket", str(sock), *ENGINE, *argv, cwd=d)

    go.sock = sock
    yield go
    if probe(sock) is not None:
        stop_main(["--socket", str(sock)])


def local(capsys, tiny_model, *argv):
    rc = cli_main(["generate", "--model", str(tiny_model), *ENGINE, *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


@pytest.mark.parametrize("argv", [
    ["--prompt-ids", "300,301,302,303", "--temperature", "0", "--max-new-tokens", "7", "--ignore-eos"],
    ["--prompt", "The capital of France is", "--temperature", "0", "--max-new-tokens", "5"],
    ["--chat", "你好", "--system", "Answer briefly.", "--temperature", "0.8", "--seed", "7", "--max-new-tokens", "6"],
])
def test_connect_prints_what_local_generate_prints(remote, capsys, tiny_model, argv):
    r = remote(*argv, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    want = json.loads(local(capsys, tiny_model, *argv, "--json").strip().splitlines()[-1])
    assert got["token_ids"] == want["token_ids"] and got["text"] == want["text"]
    assert got["finish_reason"] == want["finish_reason"]
    assert set(got["usage"]) == set(want["usage"]) and got["usage"]["completion_tokens"] == len(got["token_ids"])
    plain = remote(*argv)  # streamed text, then a newline, like local generate
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == want["text"] + "\n" == local(capsys, tiny_model, *argv)


def test_connect_uses_the_running_server(remote):
    first = remote("--prompt-ids", "5,6", "--max-new-tokens", "1")
    assert first.returncode == 0, first.stderr
    pid = probe(remote.sock)["pid"]
    again = remote("--prompt-ids", "5,6", "--max-new-tokens", "1")
    assert again.returncode == 0 and "starting the engine server" not in again.stderr
    assert probe(remote.sock)["pid"] == pid


def test_connect_refusal_is_one_error_line(remote):
    r = remote("--prompt-ids", ",".join(["5"] * 1100), "--max-new-tokens", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: the engine server refused the request: ")
    bad = remote("--prompt-ids", "1,x")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --prompt-ids must be comma-separated integers, " \
                                                         "got '1,x'"


def test_connect_to_a_model_that_cannot_load_prints_its_reason(tmp_path):
    bad = tmp_path / "not-qwen"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    r = run("--connect", "--model", str(bad), "--socket", str(tmp_path / "s.sock"), *ENGINE, "--prompt", "hi",
            cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the engine server exited with code 2 while starting: ") and "not Qwen v1" in last
    assert f"(log: {tmp_path / 's.log'})" in last
