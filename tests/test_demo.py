"""The built-in demo checkpoint: built on first use, and its replies stop early by default (random weights
never end one, and 512 tokens take minutes on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from inference.models.demo import DEMO_MAX_NEW_TOKENS, ensure_demo, write_generation_config


def test_the_demo_replies_briefly_by_default_and_an_older_demo_is_brought_up_to_date(tmp_path):
    demo = ensure_demo(tmp_path / "demo")
    gen = json.loads((demo / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == DEMO_MAX_NEW_TOKENS < 512
    write_generation_config(demo)  # as a demo built before the short default was
    assert json.loads((demo / "generation_config.json").read_text())["max_new_tokens"] == 512
    ensure_demo(demo)
    assert json.loads((demo / "generation_config.json").read_text())["max_new_tokens"] == DEMO_MAX_NEW_TOKENS
    out = subprocess.run([sys.executable, "-m", "inference", "generate", "--model", str(demo), "--device", "cpu",
                          "--prompt-ids", "1,2,3", "--temperature", "0", "--ignore-eos", "--json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout.strip().splitlines()[-1])["token_ids"]) == DEMO_MAX_NEW_TOKENS
