"""`qwen-chat compare` on the tiny checkpoint against its W8A16 quantization (real quantized weights), both
as real background servers in a private runtime folder; and the socket's `prompt_logprobs` field."""

from __future__ import annotations

import json

import pytest
import torch

from inference import protocol as P
from inference.client import EngineClient, launcher
from inference.client.stop import stop_server
from inference.compare.prompts import Prompt
from inference.compare.runner import score
from inference.config import SamplingParams
from inference.entrypoints.cli import main as cli_main

pytestmark = pytest.mark.timeout(300)
ENGINE = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "64"]
GREEDY = ["--max-new-tokens", "24"]
LONG = " ".join(["word"] * 100)  # fits A's context (256), not B's (64)


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory):
    """A (float32) and B (w8a16, --max-model-len 64) on their default sockets of a private runtime folder;
    both stopped at the end."""
    run = tmp_path_factory.mktemp("run")
    run.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(run))
        mp.setenv("OMP_NUM_THREADS", "1")
        try:
            a = launcher.ensure_server(str(tiny_model), dtype="float32", device="cpu", extra_args=ENGINE[4:])
            b = launcher.ensure_server(str(tiny_model), dtype="float32", device="cpu", quant="w8a16",
                                       extra_args=[*ENGINE[4:], "--max-model-len", "64"])
            yield a, b
        finally:
            for sock in run.glob("qwen-chat/*.sock"):
                stop_server(sock, timeout=20)


def compare(capsys, tiny_model, prompts, *argv):
    rc = cli_main(["compare", "--model", str(tiny_model), *ENGINE, *GREEDY, "--prompts", str(prompts), *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def generate_json(capsys, tiny_model, prompt, *argv) -> list[int]:
    rc = cli_main(["generate", "--model", str(tiny_model), *ENGINE, *GREEDY, "--prompt", prompt, "--temperature",
                   "0", "--repetition-penalty", "1", "--json", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])["token_ids"]


def test_socket_prompt_logprobs_are_the_engines(engines, tiny_engine):
    prompt = list(range(300, 330))
    with EngineClient(engines[0]) as c:
        events = list(c.generate(prompt_ids=prompt, max_new_tokens=1, prompt_logprobs=2))
    assert events[-1]["event"] == "done"
    got = [e for e in events if e["event"] == "logprobs"][0]["prompt"]
    _, logits = tiny_engine.generate_with_logits([prompt], SamplingParams(max_new_tokens=1, logits="all"))
    ref = torch.log_softmax(logits[0].float(), -1)  # row i scores token i + 1
    assert len(got) == len(prompt) and got[0] is None
    for i in range(1, len(prompt)):
        lp, alts = got[i]
        assert lp == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
        assert [t for t, _ in alts] == ref[i - 1].topk(2).indices.tolist()
    for bad in (21, -1, 1.5, True):
        with pytest.raises(P.ProtocolError, match="'prompt_logprobs' must be an integer in 0..20 or null"):
            P.parse_request(P.request("generate", id="x", prompt_ids=[1], prompt_logprobs=bad))


def test_first_difference_is_the_one_of_two_generate_runs(engines, capsys, tiny_model, tmp_path):
    texts = ["The capital of France is", "Hello there"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    rc, _, err = compare(capsys, tiny_model, tmp_path / "p.txt", "--b-quant", "w8a16", "--out",
                         str(tmp_path / "r.json"))
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["engines"]["b"].endswith("w8a16, tp 1")
    for text, rec in zip(texts, report["prompts"]):
        a = generate_json(capsys, tiny_model, text)
        b = generate_json(capsys, tiny_model, text, "--quant", "w8a16")
        want = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # they do differ
        assert rec["a"]["token_ids"] == a and rec["b"]["token_ids"] == b
        assert rec["first_diff"] == want
        assert rec["agreement"] == pytest.approx(sum(x == y for x, y in zip(a, b)) / 24)
        assert rec["a_logprob"] < 0 and rec["b_logprob"] < 0 and rec["b_logprob"] != rec["a_logprob"]
        with EngineClient(engines[0]) as c:  # A's own reply scored as B's is: its generation logprobs
            again = score(c, Prompt("x", 1, text), a)
        assert sum(again) / len(again) == pytest.approx(rec["a_logprob"], abs=1e-4)
    assert report["summary"]["compared"] == 2 and report["summary"]["identical"] == 0


def test_an_engine_against_itself_agrees_fully(engines, capsys, tiny_model, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "The capital of France is"}\n'
                 '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]}\n')
    rc, out, err = compare(capsys, tiny_model, f)
    assert rc == 0, err
    rows = [r for r in out.splitlines() if r.startswith("| ")][1:]
    assert [r.split(" | ")[2:4] for r in rows[:2]] == [["none", "1.000"]] * 2
    assert rows[2].startswith("| all | 2 prompts | 2/2 identical | 1.000 |")
    for r in rows[:2]:
        cells = r.split(" | ")
        assert cells[4] == cells[5] != "-"  # B's reply is A's: the same score


def test_a_prompt_failing_on_one_side_is_reported(engines, capsys, tiny_model, tmp_path):
    (tmp_path / "p.txt").write_text(f"Hello there\n{LONG}\nThe capital of France is\n")
    rc, _, err = compare(capsys, tiny_model, tmp_path / "p.txt", "--b-quant", "w8a16", "--out",
                         str(tmp_path / "r.md"))
    assert rc == 0, err
    assert "[2/3] line 2: B failed: " in err and "prompt_too_long" in err
    rows = [r for r in (tmp_path / "r.md").read_text().splitlines() if r.startswith("| ")][1:]
    assert "B: " in rows[1].split(" | ")[-1] and "prompt_too_long" in rows[1]
    assert rows[1].split(" | ")[6] != "-"  # A answered it
    assert [r.split(" | ")[2] for r in (rows[0], rows[2])] == ["18", "18"]
    assert rows[3].startswith("| all | 3 prompts | 0/2 identical |") and "1 failed" in rows[3]


def test_a_rerun_skips_the_prompts_done(engines, capsys, tiny_model, tmp_path):
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    out = tmp_path / "r.json"
    rc, _, err = compare(capsys, tiny_model, tmp_path / "p.txt", "--b-quant", "w8a16", "--out", str(out))
    assert rc == 0, err
    assert [ln.split(":")[0] for ln in err.splitlines() if ln.startswith("[")] == ["[1/3] line 1", "[2/3] line 2",
                                                                                   "[3/3] line 3"]
    state = tmp_path / "r.progress.jsonl"
    lines = state.read_text().splitlines()
    assert len(lines) == 4  # the run's signature, then one line per prompt
    first = json.loads(out.read_text())
    state.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # killed while writing the third
    out.unlink()
    rc, _, err = compare(capsys, tiny_model, tmp_path / "p.txt", "--b-quant", "w8a16", "--out", str(out))
    assert rc == 0, err
    assert "resuming: 2 of 3 prompts done" in err and "[1/3]" not in err and "[3/3] line 3: " in err
    again = json.loads(out.read_text())
    assert [r["b"]["token_ids"] for r in again["prompts"]] == [r["b"]["token_ids"] for r in first["prompts"]]
    assert len(state.read_text().splitlines()) == 4
    rc, _, err = compare(capsys, tiny_model, tmp_path / "p.txt", "--out", str(out))  # another B: refused
    assert rc == 2 and err.startswith("error: ") and "differs in: b" in err and "--restart" in err


@pytest.mark.parametrize("content,name,message", [
    ("x\n", "p.csv", "give a .txt file"),
    ("\n\n", "p.txt", "holds no prompts"),
    ('{"prompt": 3}\n', "p.jsonl", "p.jsonl:1: \"prompt\" must be a non-empty string"),
    ('{"messages": [{"role": "bot", "content": "x"}]}\n', "p.jsonl", "p.jsonl:1: messages[0] must be"),
    ("{\n", "p.jsonl", "p.jsonl:1: not valid JSON"),
])
def test_a_bad_prompt_file_is_one_error_line(capsys, tiny_model, tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    rc, out, err = compare(capsys, tiny_model, tmp_path / name)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
