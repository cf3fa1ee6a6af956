"""Command-line parsing: no option is ever taken as an abbreviation of another (`--reference` is not
`--reference-tp`), every parser of the project says so, and `eval --task logits --reference` runs."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.entrypoints.cli import peek_tp
from inference.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_peek_tp_does_not_take_reference_for_reference_tp():
    assert peek_tp(["--task", "logits", "--reference", "/models/qwen-14b"]) == 1
    assert peek_tp(["--tp", "2", "--reference", "7b"]) == 2
    assert peek_tp(["--reference-tp=4"]) == 4


@pytest.mark.parametrize("argv, flag", [(["--tp", "two"], "--tp"), (["--reference-tp", "x"], "--reference-tp")])
def test_peek_tp_names_the_flag_that_is_not_an_integer(argv, flag):
    with pytest.raises(UserError, match=f"^{flag} must be a positive integer .*got '") as e:
        peek_tp(argv)
    assert "got '1'" not in str(e.value)


def _parsers():
    from inference.entrypoints.generate import build_parser as generate_parser
    from inference.eval.cli import build_parser as eval_parser
    from inference.quant.cli import build_parser as quantize_parser
    from inference.server.serve import build_parser as serve_parser
    from sessions.cli import _parser as sessions_parser
    from tui.cli import build_parser as app_parser

    return {"generate": (generate_parser, ["--prompt", "x", "--max-new"]),
            "serve": (serve_parser, ["--sock"]),
            "eval": (eval_parser, ["--task", "logits", "--ref"]),
            "quantize": (quantize_parser, ["--model", "m", "--out", "o", "--scheme", "w8a8", "--smo"]),
            "app": (app_parser, ["--mod"]),
            "sessions list": (sessions_parser, ["list", "--sea"])}


@pytest.mark.parametrize("name", ["generate", "serve", "eval", "quantize", "app", "sessions list"])
def test_an_abbreviated_option_is_refused(name, capsys):
    build, argv = _parsers()[name]
    with pytest.raises(SystemExit) as e:
        build().parse_args([*argv, "v"])
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, "unrecognized arguments")


def _one_error_line(err, message):
    """A bad flag is one `error:` line naming it and pointing at --help, not argparse's usage block."""
    assert message in err and err.startswith("error: ") and err.count("\n") == 1 and "--help`)" in err, err


def test_bench_and_stop_refuse_abbreviations(capsys):
    from inference.client.stop import stop_main
    from inference.entrypoints.bench import parse_args

    for call, argv in ((parse_args, ["--random", "7b"]), (stop_main, ["--mod", "demo"])):
        with pytest.raises(SystemExit) as e:
            call(argv)
        assert e.value.code == 2
        _one_error_line(capsys.readouterr().err, "unrecognized arguments")


def test_every_argument_parser_in_the_tree_turns_prefix_matching_off():
    """Every `ArgumentParser(...)` call of the project (commands, bench scripts, tests) passes
    allow_abbrev=False, or argparse would take an unknown option as a prefix of a known one."""
    bad = []
    for path in sorted(p for d in ("inference", "sessions", "tui", "bench", "tests") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "ArgumentParser", "_Parser", "CliParser"):
                ok = any(k.arg == "allow_abbrev" and getattr(k.value, "value", None) is False
                         for k in node.keywords)
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_eval_logits_with_reference_runs_through_the_real_cli(tiny_model, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "inference", "eval", "--task", "logits", "--model", str(tiny_model),
                        "--reference", str(tiny_model), "--limit", "2", "--device", "cpu", "--dtype", "float32",
                        "--num-kv-blocks", "64", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "logits_results.json").read_text())
    assert res["items_run"] == 2 and res["config"]["reference"]["model"] == res["config"]["model"]["model"]
    assert res["summary"]["prompts"] == 2 and res["summary"]["all_max_abs_diff"] == 0.0
    assert "cosine similarity" in r.stdout
