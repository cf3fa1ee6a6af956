"""`qwen-chat eval` end to end on the tiny checkpoint (float32 CPU): result files, resume, logits."""

from __future__ import annotations

import csv
import json

import pytest
from test_eval_data import write_boolq, write_ceval

from inference.engine.llm_engine import LLMEngine
from inference.eval import logits_compare, results
from inference.eval.cli import main

ENGINE = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "256", "--quiet"]


@pytest.fixture
def spy(monkeypatch):
    """Counts real engine loads and requests (the engine itself runs unchanged)."""
    counts = {"engines": 0, "requests": 0}
    init, add = LLMEngine.__init__, LLMEngine.add_request

    def counting_init(self, *a, **k):
        counts["engines"] += 1
        init(self, *a, **k)

    def counting_add(self, *a, **k):
        counts["requests"] += 1
        return add(self, *a, **k)

    monkeypatch.setattr(LLMEngine, "__init__", counting_init)
    monkeypatch.setattr(LLMEngine, "add_request", counting_add)
    return counts


def _json(path):
    return json.loads(path.read_text("utf-8"))


@pytest.mark.parametrize("scoring", ["generate", "logits"])
def test_ceval_end_to_end_writes_results(tmp_path, tiny_model, spy, scoring, capsys):
    data, out = write_ceval(tmp_path / "ceval", n_val=3), tmp_path / "out"
    rc = main(["--task", "ceval", "--scoring", scoring, "--data", str(data), "--model", str(tiny_model),
               "--out", str(out), *ENGINE])
    assert rc == 0 and spy == {"engines": 1, "requests": 6}
    res = _json(out / "ceval_results.json")
    assert res["config"]["scoring"] == scoring and res["items_run"] == 6
    assert res["overall"]["total"] == 6 and [s["total"] for s in res["subjects"]] == [3, 3]
    assert {c["category"] for c in res["categories"]} == {"STEM", "Humanities"}
    items = list(csv.DictReader(open(out / "ceval_items.csv", encoding="utf-8")))
    assert [r["id"] for r in items] == [f"{s}/{i}" for s in ("computer_network", "modern_chinese_history")
                                        for i in range(3)]
    for r in items:  # the stored prediction is what the rule gives, and "correct" agrees with it
        if scoring == "generate":
            assert r["prediction"] == r["output"].lstrip()[:1]
        else:
            assert r["prediction"] in "ABCD"
        assert r["correct"] == str(int(r["prediction"] == r["answer"]))
    assert res["overall"]["correct"] == sum(int(r["correct"]) for r in items)
    summary = list(csv.reader(open(out / "ceval_results.csv", encoding="utf-8")))
    assert summary[0][:2] == ["level", "subject"] and summary[-1][0] == "total"
    assert "overall" in capsys.readouterr().out


def test_ceval_resume_skips_done_items(tmp_path, tiny_model, spy, monkeypatch):
    data, out = write_ceval(tmp_path / "ceval", n_val=4), tmp_path / "out"
    argv = ["--task", "ceval", "--data", str(data), "--model", str(tiny_model), "--out", str(out), *ENGINE,
            "--max-new-tokens", "3"]
    add = results.PartialResults.add
    calls = []

    def interrupted_add(self, item_id, record):
        add(self, item_id, record)
        calls.append(item_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C came after three items were saved

    monkeypatch.setattr(results.PartialResults, "add", interrupted_add)
    assert main(argv) == 130
    assert not (out / "ceval_results.json").exists()  # nothing half-written
    done = [json.loads(x)["id"] for x in (out / "ceval_progress.jsonl").read_text().splitlines()[1:]]
    assert done == calls and len(done) == 3
    monkeypatch.setattr(results.PartialResults, "add", add)
    spy.update(engines=0, requests=0)
    assert main(argv) == 0
    assert spy == {"engines": 1, "requests": 8 - 3}  # only the five not done
    res = _json(out / "ceval_results.json")
    assert (res["items_run"], res["items_resumed"], res["overall"]["total"]) == (5, 3, 8)
    spy.update(engines=0, requests=0)
    assert main(argv) == 0 and spy == {"engines": 0, "requests": 0}  # all done: no engine at all
    assert main([*argv, "--dtype", "bfloat16"]) == 2  # another configuration is not mixed in
    assert main([*argv, "--restart"]) == 0 and spy["requests"] == 8


def test_boolq_end_to_end(tmp_path, tiny_model, spy):
    data, out = write_boolq(tmp_path / "boolq", n=5), tmp_path / "out"
    assert main(["--task", "boolq", "--data", str(data), "--model", str(tiny_model), "--out", str(out),
                 "--limit", "4", *ENGINE]) == 0
    assert spy["requests"] == 4
    res = _json(out / "boolq_results.json")
    assert res["overall"]["total"] == 4 and res["files"][0]["file"] == "val.jsonl"
    rows = list(csv.DictReader(open(out / "boolq_items.csv", encoding="utf-8")))
    for r in rows:  # yes iff log p(" yes") > log p(" no")
        assert r["prediction"] == str(float(r["logprob_yes"]) > float(r["logprob_no"]))
        assert r["correct"] == str(int(r["prediction"] == r["answer"]))


def test_bad_data_is_reported_before_the_engine_loads(tmp_path, tiny_model, spy, capsys):
    data, out = write_boolq(tmp_path / "boolq", n=3), tmp_path / "out"
    with open(data / "val.jsonl", "a") as f:
        f.write('{"question": "q", "passage": "p", "title": "t"}\n')
    assert main(["--task", "boolq", "--data", str(data), "--model", str(tiny_model), "--out", str(out),
                 *ENGINE]) == 2
    assert "val.jsonl:4: missing field(s) answer" in capsys.readouterr().err
    assert spy["engines"] == 0 and not out.exists()
    assert main(["--task", "ceval", "--model", str(tiny_model), *ENGINE]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_logits_of_a_checkpoint_against_itself(tmp_path, tiny_model, spy, capsys):
    out = tmp_path / "out"
    assert main(["--task", "logits", "--model", str(tiny_model), "--reference", str(tiny_model),
                 "--out", str(out), *ENGINE]) == 0
    assert spy["engines"] == 2  # one per side, one after the other
    s = _json(out / "logits_results.json")["summary"]
    assert s["prompts"] == 8 and s["last_cosine_min"] == 1.0 and s["all_cosine_min"] == 1.0
    assert s["last_top1_agreement"] == 1.0 and s["all_top1_agreement"] == 1.0
    assert s["all_kl_max"] == 0.0 and s["all_max_abs_diff"] == 0.0
    table = capsys.readouterr().out
    assert "1.000000" in table and "100.00%" in table
    assert not (out / "logits_model").exists() and not (out / "logits_reference").exists()


def test_logits_bf16_against_fp32_and_resume(tmp_path, tiny_model, spy, monkeypatch):
    out, prompts = tmp_path / "out", tmp_path / "p.txt"
    prompts.write_text("The capital of France is\n中国的首都是\nHello, world!\n", "utf-8")
    argv = ["--task", "logits", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(out),
            *ENGINE, "--dtype", "bfloat16", "--reference-dtype", "float32"]
    real = logits_compare.dump_logits

    def fail_on_model_side(engine, *a, desc="logits", **k):
        if desc == "model":
            raise KeyboardInterrupt
        return real(engine, *a, desc=desc, **k)

    monkeypatch.setattr(logits_compare, "dump_logits", fail_on_model_side)
    assert main(argv) == 130
    assert len(list((out / "logits_reference").glob("p*.safetensors"))) == 3
    monkeypatch.setattr(logits_compare, "dump_logits", real)
    spy.update(engines=0, requests=0)
    assert main(argv) == 0
    assert spy == {"engines": 1, "requests": 3}  # the reference side was not run again
    res = _json(out / "logits_results.json")
    assert res["config"]["model"]["dtype"] == "bfloat16" and res["config"]["reference"]["dtype"] == "float32"
    s = res["summary"]
    assert s["prompts"] == 3 and 0.99 < s["all_cosine_mean"] < 1.0 and s["all_kl_max"] > 0.0
    assert s["all_max_abs_diff"] > 0.0


def test_logits_dump_job(tmp_path, tiny_model):
    """The per-side process (`--task logits-dump`) that tp > 1 sides run under torchrun."""
    import dataclasses

    from safetensors.torch import load_file

    from inference.config import EngineConfig

    cfg = EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=64)
    d = tmp_path / "dump"
    d.mkdir()
    (d / "job.json").write_text(json.dumps({"engine": dataclasses.asdict(cfg), "ids": [[1, 2, 3], [4, 5]],
                                            "indices": [0, 7]}))
    assert main(["--task", "logits-dump", "--model", str(tiny_model), "--dump-dir", str(d), "--quiet"]) == 0
    assert load_file(str(d / "p0.safetensors"))["logits"].shape == (3, 151936)
    assert load_file(str(d / "p7.safetensors"))["logits"].shape == (2, 151936)


def test_logits_tp2_reference_runs_in_its_own_torchrun_job(tmp_path, tiny_model, spy):
    """A tp > 1 side runs as `python -m inference eval --task logits-dump` under torchrun (2 gloo ranks)."""
    out = tmp_path / "out"
    assert main(["--task", "logits", "--model", str(tiny_model), "--reference-tp", "2", "--limit", "2",
                 "--out", str(out), *ENGINE]) == 0
    assert spy["engines"] == 1  # only the tp 1 side was loaded in this process
    res = _json(out / "logits_results.json")
    assert res["config"]["reference"]["tp"] == 2 and res["config"]["model"]["tp"] == 1
    s = res["summary"]
    assert s["prompts"] == 2 and s["all_top1_agreement"] == 1.0 and s["all_cosine_min"] > 0.999999
    assert s["all_max_abs_diff"] < 1e-3
