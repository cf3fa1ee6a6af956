"""`qwen-chat bench` on the CPU (real processes, tiny checkpoint): small default cases, a progress line
per case on stderr, and one clean table on stdout ("-" where a value does not apply, never nan)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from inference.entrypoints.bench import COLUMNS

pytestmark = pytest.mark.timeout(300)
CPU = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "64"]


def bench(tiny_model, tmp_path, *argv):
    return subprocess.run([sys.executable, "-m", "inference", "bench", "--model", str(tiny_model), *CPU, *argv],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def table(stdout: str) -> list[dict]:
    """The table's rows; one line under it: load time and memory."""
    lines = stdout.strip().splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == COLUMNS
    assert set(lines[1]) <= {"-", "+"}
    assert lines[-1].startswith("load ") and " GiB read a step; KV cache " in lines[-1]
    return [dict(zip(COLUMNS, (c.strip() for c in ln.split(" | ")), strict=True)) for ln in lines[2:-1]]


def test_cpu_defaults_progress_and_one_clean_table(tiny_model, tmp_path):
    r = bench(tiny_model, tmp_path, "--out", str(tmp_path / "b.csv"))
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert [(int(x["Batchsize"]), int(x["In_seq"]), int(x["Out_seq"])) for x in rows] == [
        (1, 32, 32), (1, 128, 64), (4, 32, 32), (4, 128, 64)]  # small cases, not GPU-sized ones
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("[") and "batch" in ln]
    assert [p.split("]")[0] + "]" for p in progress] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "nan" not in r.stdout.lower() and "{" not in r.stdout + r.stderr
    for x in rows:
        assert x["Floor(Tokens/s)"] == "-" and x["% of floor"] == "-"  # no bandwidth floor on the CPU
        assert float(x["Non-first token Throughput(Tokens/s)"]) > 0 and float(x["Total time(s)"]) > 0
    assert (tmp_path / "b.csv").read_text().count("\n") == 5 and "nan" not in (tmp_path / "b.csv").read_text()


def test_one_token_cases_show_a_dash_where_there_is_no_next_token(tiny_model, tmp_path):
    r = bench(tiny_model, tmp_path, "--cases", "2:8:1", "--ttft-lens", "16")
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert len(rows) == 2 and rows[1]["Model"].endswith(" ttft")
    for x in rows:
        assert x["Non-first token time(ms)"] == "-" and x["Non-first token Throughput(Tokens/s)"] == "-"
        assert float(x["First token time(ms)"]) > 0
    assert "nan" not in r.stdout.lower() and "[2/2]" in r.stderr


@pytest.mark.parametrize("argv, message", [(["--cases", "1:x"], "bad --batch-sizes/--case-pairs/--cases"),
                                           (["--batch-sizes", "0"], "--batch-sizes: every number must be a positive"),
                                           (["--cases", "1:8"], "each case is batch:in:out")])
def test_bad_case_lists_are_one_error_line(tiny_model, tmp_path, argv, message):
    r = bench(tiny_model, tmp_path, *argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
