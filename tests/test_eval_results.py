"""Eval result files, the resumable progress log, logits metrics and the progress bar (no engine)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from inference.errors import UserError
from inference.eval.logits_metrics import DEFAULT_PROMPTS, aggregate, compare_logits, format_table, load_prompts
from inference.eval.progress import ProgressBar
from inference.eval.results import PartialResults, atomic_write_text, write_csv, write_json

SIG = {"task": "ceval", "model": "/m", "dtype": "float32", "scoring": "generate"}


def test_partial_results_resume_and_torn_tail(tmp_path):
    path = tmp_path / "ceval_progress.jsonl"
    with PartialResults(path, SIG) as p:
        p.add("a/0", {"correct": True})
        p.add("a/1", {"correct": False})
    with open(path, "a") as f:
        f.write('{"id": "a/2", "corr')  # killed mid-line
    p = PartialResults(path, SIG)
    assert p.resumed == 2 and "a/1" in p and "a/2" not in p
    assert p.records["a/0"] == {"id": "a/0", "correct": True}
    with p:
        p.add("a/2", {"correct": True})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0]) == {"signature": SIG}
    assert json.loads(lines[3]) == {"id": "a/2", "correct": True}
    assert PartialResults(path, SIG).resumed == 3


def test_partial_results_refuses_other_runs_and_corruption(tmp_path):
    path = tmp_path / "p.jsonl"
    with PartialResults(path, SIG) as p:
        p.add("x", {"correct": True})
    with pytest.raises(UserError, match=r"different run \(differs in: dtype\).*--restart"):
        PartialResults(path, {**SIG, "dtype": "bfloat16"})
    assert PartialResults(path, {**SIG, "dtype": "bfloat16"}, restart=True).resumed == 0
    assert not path.exists()
    path.write_text(json.dumps({"signature": SIG}) + "\nnot json\n")
    with pytest.raises(UserError, match=r"p\.jsonl:2: corrupt progress line"):
        PartialResults(path, SIG)
    path.write_text("hello\n")
    with pytest.raises(UserError, match=r"p\.jsonl:1: not a progress file"):
        PartialResults(path, SIG)


def test_atomic_writes_leave_no_temp_and_keep_old_file_on_failure(tmp_path):
    write_csv(tmp_path / "r.csv", ["a", "b"], [[1, "x,y"], [2, "中文"]])
    assert (tmp_path / "r.csv").read_text("utf-8") == 'a,b\n1,"x,y"\n2,中文\n'
    write_json(tmp_path / "r.json", {"acc": 0.5})
    assert json.loads((tmp_path / "r.json").read_text()) == {"acc": 0.5}

    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "r.json", 42)  # write fails midway: old file stays, no temp left
    assert json.loads((tmp_path / "r.json").read_text()) == {"acc": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]


def test_compare_logits_hand_checked():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    cand = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    m = compare_logits(ref, cand)
    assert m["tokens"] == 2
    assert m["last_cosine"] == pytest.approx(0.0) and m["last_top1"] is False
    assert m["all_cosine_mean"] == pytest.approx(0.5) and m["all_cosine_min"] == pytest.approx(0.0)
    assert m["all_top1_agreement"] == 0.5 and m["all_top1_matches"] == 1
    assert m["last_max_abs_diff"] == 2.0 and m["all_max_abs_diff"] == 2.0
    # KL(ref || cand) at the last position, by hand: p = softmax([0,2,0]), q = softmax([0,0,2])
    p = torch.softmax(torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64), 0)
    q = torch.softmax(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), 0)
    kl = float((p * (p.log() - q.log())).sum())
    assert m["last_kl"] == pytest.approx(kl) and m["all_kl_mean"] == pytest.approx(kl / 2)
    same = compare_logits(ref, ref.clone())
    assert same["last_cosine"] == pytest.approx(1.0, abs=1e-12) and same["all_top1_agreement"] == 1.0
    assert same["all_kl_max"] == 0.0 and same["all_max_abs_diff"] == 0.0
    with pytest.raises(UserError, match="share the vocabulary"):
        compare_logits(ref, torch.zeros(2, 4))


def test_aggregate_weights_positions_and_table():
    a = {"tokens": 1, "last_cosine": 1.0, "last_top1": True, "last_kl": 0.0, "last_max_abs_diff": 0.0,
         "all_cosine_mean": 1.0, "all_cosine_min": 1.0, "all_top1_agreement": 1.0, "all_top1_matches": 1,
         "all_kl_mean": 0.0, "all_kl_max": 0.0, "all_max_abs_diff": 0.0}
    b = {**a, "tokens": 3, "last_cosine": 0.5, "last_top1": False, "all_cosine_mean": 0.5,
         "all_top1_matches": 0, "all_top1_agreement": 0.0, "all_kl_mean": 0.2, "all_kl_max": 0.4}
    s = aggregate([a, b])
    assert s["prompts"] == 2 and s["tokens"] == 4
    assert s["last_top1_agreement"] == 0.5 and s["all_top1_agreement"] == 0.25
    assert s["all_cosine_mean"] == pytest.approx((1.0 + 3 * 0.5) / 4) and s["all_kl_max"] == 0.4
    table = format_table(s)
    assert "top-1 agreement" in table and "50.00%" in table and "25.00%" in table


def test_load_prompts(tmp_path):
    assert load_prompts(None) == list(DEFAULT_PROMPTS)
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in DEFAULT_PROMPTS)  # includes Chinese
    (tmp_path / "p.txt").write_text("hello\n\nline\\nbreak\n")
    assert load_prompts(tmp_path / "p.txt") == ["hello", "line\nbreak"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: expected"):
        load_prompts(tmp_path / "p.jsonl")
    with pytest.raises(UserError, match="not found"):
        load_prompts(tmp_path / "none.txt")


def test_progress_bar_lines_on_a_pipe():
    buf = io.StringIO()
    bar = ProgressBar(20, "ceval", stream=buf)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("ceval [") and "0/20" in lines[0]
    assert "20/20 100%" in lines[-1] and len(lines) == 11  # start + one per 10%
