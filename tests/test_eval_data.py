"""Eval data, prompts and scoring without the engine: C-Eval and BoolQ in their official layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from inference.errors import UserError
from inference.eval import boolq, ceval
from inference.tokenizer import QwenTokenizer

HEADER_DEV = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
HEADER_VAL = ["id", "question", "A", "B", "C", "D", "answer"]
MAPPING = {
    "computer_network": ["Computer Network", "计算机网络", "STEM"],
    "modern_chinese_history": ["Modern Chinese History", "近代史纲要", "Humanities"],
}


def _rows(subject: str, n: int, dev: bool) -> list[list[str]]:
    rows = []
    for i in range(n):
        ans = "ABCD"[i % 4]
        q = f"{subject} {'dev' if dev else 'val'} question {i}: 1+{i}=?"
        row = [str(i), q, f"a{i}", f"b{i}", f"c{i}", f"d{i}", ans]
        rows.append(row + ([f"because {ans}"] if dev else []))
    return rows


def write_csv_file(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_ceval(root: Path, n_val: int = 4, mapping: dict | None = None) -> Path:
    """A small C-Eval folder in the official layout (ceval-exam + subject_mapping.json)."""
    mapping = mapping or MAPPING
    root.mkdir(parents=True, exist_ok=True)
    (root / "subject_mapping.json").write_text(json.dumps(mapping, ensure_ascii=False, indent=4), "utf-8")
    for key in mapping:
        write_csv_file(root / "dev" / f"{key}_dev.csv", HEADER_DEV, _rows(key, 5, True))
        write_csv_file(root / "val" / f"{key}_val.csv", HEADER_VAL, _rows(key, n_val, False))
    return root


def write_boolq(root: Path, n: int = 6, name: str = "val.jsonl") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"question": f"is {i} even", "title": f"Number {i}", "answer": i % 2 == 0,
                         "passage": f"{i} is {'even' if i % 2 == 0 else 'odd'}."}) for i in range(n)]
    (root / name).write_text("\n".join(lines) + "\n", "utf-8")
    return root


# -- C-Eval ----------------------------------------------------------------------------------------------
def test_ceval_prompt_is_exactly_the_reference_text(tmp_path):
    subjects = ceval.load_ceval(write_ceval(tmp_path / "ceval"))
    assert [s.key for s in subjects] == ["computer_network", "modern_chinese_history"]
    s = subjects[0]
    assert (s.english, s.chinese, s.category) == ("Computer Network", "计算机网络", "STEM")
    assert len(s.shots) == 5 and len(s.items) == 4
    expected = "The following are multiple choice questions (with answers) about  computer network.\n\n"
    for i in range(5):
        expected += (f"computer_network dev question {i}: 1+{i}=?\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\n"
                     f"Answer: {'ABCD'[i % 4]}\n\n")
    expected += "computer_network val question 2: 1+2=?\nA. a2\nB. b2\nC. c2\nD. d2\nAnswer:"
    assert ceval.build_prompt(s, s.items[2]) == expected
    assert s.items[2].item_id == "computer_network/2" and s.items[2].answer == "C"
    assert s.items[2].source.endswith("computer_network_val.csv:4")


def test_ceval_zero_shot_limit_and_subject_filter(tmp_path):
    root = write_ceval(tmp_path / "ceval", n_val=6)
    subjects = ceval.load_ceval(root, subjects=["modern_chinese_history"], shots=0, limit=2)
    assert [s.key for s in subjects] == ["modern_chinese_history"]
    assert [i.item_id for i in subjects[0].items] == ["modern_chinese_history/0", "modern_chinese_history/1"]
    prompt = ceval.build_prompt(subjects[0], subjects[0].items[1])
    assert prompt.startswith("The following are multiple choice questions (with answers) about  modern "
                             "chinese history.\n\nmodern_chinese_history val question 1")


def test_ceval_multiline_quoted_fields_keep_line_numbers(tmp_path):
    root = write_ceval(tmp_path / "ceval")
    rows = _rows("computer_network", 3, False)
    rows[0][1] = "line one\nline two, with a comma"
    rows[2][6] = "E"  # bad answer on the row that starts on line 5 (line 2 spans two lines)
    write_csv_file(root / "val" / "computer_network_val.csv", HEADER_VAL, rows)
    with pytest.raises(UserError, match=r"computer_network_val\.csv:5: answer 'E' is not one of A, B, C, D"):
        ceval.load_ceval(root)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda r: (r / "val" / "computer_network_val.csv").write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n"),
     r"computer_network_val\.csv:1: missing column\(s\) answer \(the test split has no answers"),
    (lambda r: (r / "val" / "computer_network_val.csv").write_text(
        "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d\n"),
     r"computer_network_val\.csv:3: 6 fields, the header has 7"),
    (lambda r: (r / "val" / "computer_network_val.csv").write_text(
        "id,question,A,B,C,D,answer\n7,q,a,b,c,d,A\n7,q,a,b,c,d,B\n"),
     r"computer_network_val\.csv:3: duplicate id '7' \(first on line 2\)"),
    (lambda r: (r / "dev" / "modern_chinese_history_dev.csv").unlink(),
     r"modern_chinese_history_dev\.csv not found"),
    (lambda r: write_csv_file(r / "val" / "astronomy_val.csv", HEADER_VAL, _rows("astronomy", 1, False)),
     r"astronomy_val\.csv: unknown subject 'astronomy', not in .*subject_mapping\.json"),
    (lambda r: (r / "subject_mapping.json").write_text('{\n  "computer_network": ["Computer Network",\n}'),
     r"subject_mapping\.json:3: not valid JSON"),
    (lambda r: (r / "subject_mapping.json").write_text('{\n"computer_network": ["a", "b", "STEM"],\n'
                                                       '"modern_chinese_history": "History"\n}'),
     r"subject_mapping\.json:3: subject 'modern_chinese_history' must map to"),
    (lambda r: write_csv_file(r / "dev" / "computer_network_dev.csv", HEADER_DEV, _rows("x", 3, True)),
     r"computer_network_dev\.csv: 3 rows, 5 shots need 5"),
])
def test_ceval_bad_data_names_file_and_line(tmp_path, mutate, pattern):
    root = write_ceval(tmp_path / "ceval")
    mutate(root)
    with pytest.raises(UserError, match=pattern):
        ceval.load_ceval(root)


def test_ceval_unknown_subject_filter(tmp_path):
    with pytest.raises(UserError, match=r"--subjects: unknown subject\(s\) physics"):
        ceval.load_ceval(write_ceval(tmp_path / "c"), subjects=["physics"])


def test_ceval_parse_generation():
    assert ceval.parse_generation(" B. because") == "B"
    assert ceval.parse_generation("\n\n  C") == "C"
    assert ceval.parse_generation("答案是A") == "答"  # the reference's rule, literally
    assert ceval.parse_generation("   ") == ""


def test_ceval_logits_scoring_on_constructed_vectors():
    tok = QwenTokenizer.bundled()
    ids = ceval.choice_token_ids(tok)
    assert ids == {"A": sorted([32, 362]), "B": sorted([33, 425]), "C": sorted([34, tok.encode(" C")[0]]),
                   "D": sorted([35, tok.encode(" D")[0]])}
    logits = torch.zeros(151936)
    logits[tok.encode(" C")[0]] = 5.0  # " C" wins although "A" is high too
    logits[32] = 4.0
    logits[100] = 50.0  # a non-choice token is ignored
    pred, scores = ceval.predict_from_logits(logits, ids)
    assert pred == "C" and scores["C"] == 5.0 and scores["A"] == 4.0 and scores["B"] == 0.0
    logits[35] = 7.0  # bare "D" counts for D
    assert ceval.predict_from_logits(logits, ids)[0] == "D"
    assert ceval.predict_from_logits(torch.zeros(151936), ids)[0] == "A"  # ties go to the first letter


def test_ceval_summary_per_subject_category_overall(tmp_path):
    subjects = ceval.load_ceval(write_ceval(tmp_path / "c", n_val=4))
    recs = {f"computer_network/{i}": {"correct": i < 3} for i in range(4)}
    recs["modern_chinese_history/0"] = {"correct": False}
    recs["modern_chinese_history/1"] = {"correct": True}
    s = ceval.summarize(subjects, recs)
    assert s["overall"] == {"correct": 4, "total": 6, "accuracy": 4 / 6}
    assert [(x["subject"], x["correct"], x["total"]) for x in s["subjects"]] == [
        ("computer_network", 3, 4), ("modern_chinese_history", 1, 2)]
    assert {c["category"]: c["accuracy"] for c in s["categories"]} == {"STEM": 0.75, "Humanities": 0.5}


# -- BoolQ -----------------------------------------------------------------------------------------------
def test_boolq_prompt_and_ids(tmp_path):
    items = boolq.load_boolq(write_boolq(tmp_path / "b", n=3))
    assert [i.item_id for i in items] == ["val.jsonl:1", "val.jsonl:2", "val.jsonl:3"]
    assert boolq.build_prompt(items[1]) == "Number 1 -- 1 is odd.\nQuestion: is 1 even?\nAnswer:"
    assert items[0].answer is True and items[1].answer is False
    tok = QwenTokenizer.bundled()
    assert boolq.yes_no_ids(tok) == (9834, 902)


def test_boolq_prediction_uses_log_softmax_of_yes_and_no():
    logits = torch.full((151936,), -3.0)
    logits[9834], logits[902] = 1.0, 2.0
    pred, lp_yes, lp_no = boolq.predict(logits, 9834, 902)
    lse = torch.logsumexp(logits.double(), 0).item()  # float32 math in predict, as the reference does
    assert pred is False
    assert lp_yes == pytest.approx(1.0 - lse, abs=1e-3) and lp_no == pytest.approx(2.0 - lse, abs=1e-3)
    logits[9834] = 2.5
    assert boolq.predict(logits, 9834, 902)[0] is True
    logits[9834] = 2.0  # a tie is "no", as in the reference (strictly greater)
    assert boolq.predict(logits, 9834, 902)[0] is False


def test_boolq_limit_per_file_and_summary(tmp_path):
    root = write_boolq(tmp_path / "b", n=5, name="a.jsonl")
    write_boolq(root, n=4, name="b.jsonl")
    items = boolq.load_boolq(root, limit=3)
    assert [i.item_id for i in items] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "b.jsonl:1", "b.jsonl:2",
                                          "b.jsonl:3"]
    recs = {i.item_id: {"correct": n % 2 == 0} for n, i in enumerate(items)}
    s = boolq.summarize(items, recs)
    assert s["overall"] == {"correct": 3, "total": 6, "accuracy": 0.5}
    assert [(f["file"], f["correct"]) for f in s["files"]] == [("a.jsonl", 2), ("b.jsonl", 1)]


@pytest.mark.parametrize("line, pattern", [
    ('{"question": "q", "passage": "p", "title": "t", "answer": true', r"bad\.jsonl:2: not valid JSON"),
    ('{"question": "q", "passage": "p", "answer": true}', r"bad\.jsonl:2: missing field\(s\) title"),
    ('{"question": "q", "passage": "p", "title": "t", "answer": "yes"}',
     r"bad\.jsonl:2: answer must be true or false"),
    ('["q", "p"]', r"bad\.jsonl:2: expected a JSON object"),
    ('{"question": 3, "passage": "p", "title": "t", "answer": true}', r"bad\.jsonl:2: field 'question' must"),
])
def test_boolq_bad_lines_name_file_and_line(tmp_path, line, pattern):
    good = json.dumps({"question": "q", "passage": "p", "title": "t", "answer": True})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=pattern):
        boolq.load_boolq(tmp_path)


def test_boolq_missing_data(tmp_path):
    with pytest.raises(UserError, match="holds no \\*.jsonl files"):
        boolq.load_boolq(tmp_path)
    with pytest.raises(UserError, match="not found"):
        boolq.load_boolq(tmp_path / "nope")
