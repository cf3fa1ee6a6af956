"""Engine-start failures: what needs no engine is one `error:` line from `qwen-chat` before the app opens
(real CLI processes); what fails while loading is headlined by its own error line, from this start's log
lines only (the launcher, and the app's failure screen through its pilot)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest

from inference.client.paths import log_path
from inference.client.server_log import error_line, read_log_tail
from tests.support.app import SIZE, make_app, wait_for
from tui.screens.engine_start import EngineFailedScreen

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def env(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return {**os.environ, "XDG_RUNTIME_DIR": str(run), "QWEN_CHAT_SESSIONS_DB": str(tmp_path / "s.db"),
            "OMP_NUM_THREADS": "1"}


def copy_of(tiny_model, tmp_path, damage):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_model, d)
    damage(d)
    return str(d)


def _config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


CASES = {
    "empty dir": (lambda d: [p.unlink() for p in d.iterdir()], [], "config.json not found"),
    "config not json": (lambda d: (d / "config.json").write_text("{oops"), [], "is not valid JSON"),
    "not qwen": (lambda d: _config(d, architectures=["LlamaForCausalLM"], model_type="llama"), [], "is not Qwen v1"),
    "layers -1": (lambda d: _config(d, num_hidden_layers=-1), [], "num_hidden_layers must be a positive integer"),
    "missing shard": (lambda d: sorted(d.glob("model-*.safetensors"))[-1].unlink(), [], "is missing"),
    "no tokenizer": (lambda d: (d / "qwen.tiktoken").unlink(), [], "qwen.tiktoken not found"),
    "tp 3": (None, ["--tp", "3"], "--tp 3: odd tensor-parallel sizes"),
    "tp 16 over 8 heads": (None, ["--tp", "16"], "does not divide the model's 8 attention heads"),
    "cuda without a gpu": (None, ["--device", "cuda"], "--device cuda: no CUDA GPU is visible"),
    "npu without torch_npu": (None, ["--device", "npu"], "--device npu: torch_npu is not installed"),
    "bad flag": (None, ["--tp", "x"], "argument --tp: invalid int value"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_app_refuses_in_one_line_before_it_opens(case, tiny_model, tmp_path, env):
    damage, argv, message = CASES[case]
    model = copy_of(tiny_model, tmp_path, damage) if damage else str(tiny_model)
    env = {**env, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for this process, on any machine
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--model", model, *argv], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr)
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert not list((tmp_path / "run").rglob("*.log"))  # no engine was started


def test_only_this_runs_log_lines_and_its_error_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("--- 2026-01-01 00:00:00 starting: old\nerror: an earlier failure\n"
                   "--- 2026-01-02 00:00:00 starting: python -m inference serve\nINFO loading\n"
                   "Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: CUDA error: no kernel\n")
    lines = read_log_tail(log, 30, this_run=True)
    assert lines == ["INFO loading", "Traceback (most recent call last):", '  File "x", line 1',
                     "RuntimeError: CUDA error: no kernel"]
    assert error_line(lines) == "RuntimeError: CUDA error: no kernel"
    assert error_line([*lines, "error: the real one"]) == "error: the real one"
    assert error_line(["INFO fine"]) is None
    assert len(read_log_tail(log, 30)) == 7  # without this_run: the whole tail


def test_failure_screen_headlines_this_starts_error_line(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    bad = tmp_path / "not-qwen"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    app = make_app(tmp_path / "s.db", model=str(bad), new=True)
    log = log_path(app.link.socket_path)
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = ["--- 2026-01-01 00:00:00 starting: python -m inference serve (an earlier run)",
           *[f"INFO inference.server: old line {i}" for i in range(40)], "error: OLD FAILURE of an earlier run"]
    log.write_text("\n".join(old) + "\n")

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, EngineFailedScreen), timeout=90,
                           what="the failure screen")
            screen = app.screen
            headline = str(screen.query_one("#failed-error").render()).splitlines()
            shown = str(screen.query_one("#failed-log Static").render())
            await pilot.press("q")
        return headline, shown, screen.log_tail

    headline, shown, tail = asyncio.run(main())
    assert headline[0].startswith("error: ") and "is not Qwen v1" in headline[0]
    assert "exited with code 2 while starting" in " ".join(headline[1:])
    assert "OLD FAILURE" not in shown and "old line" not in shown and "is not Qwen v1" in shown
    assert all("old line" not in line for line in tail)
