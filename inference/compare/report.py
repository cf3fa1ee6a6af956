"""The report of `qwen-chat compare`: a markdown table, a JSON document or a simple HTML page."""

from __future__ import annotations

import html
import json

from inference.compare.metrics import summary

HEADER = ("#", "prompt", "first diff", "agreement", "logprob A", "logprob B (under A)", "A TTFT ms", "A tok/s",
          "B TTFT ms", "B tok/s", "error")


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _label(prompt, width: int = 40) -> str:
    s = prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")
    s = " ".join(s.split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _error(r: dict) -> str:
    parts = [f"{s.upper()}: {r[s]['error']}" for s in "ab" if r[s].get("error")]
    return "; ".join(parts + ([r["score_error"]] if r.get("score_error") else []))


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for n, r in enumerate(records, 1):
        failed = r["a"].get("error") or r["b"].get("error")
        diff = "-" if failed else ("none" if r["first_diff"] is None else str(r["first_diff"]))
        out.append([str(n), _label(r["prompt"]), diff, _num(r["agreement"]), _num(r["a_logprob"]),
                    _num(r["b_logprob"]), _num(r["a"].get("ttft_ms"), 1), _num(r["a"].get("tok_s"), 1),
                    _num(r["b"].get("ttft_ms"), 1), _num(r["b"].get("tok_s"), 1), _error(r)])
    s = summary(records)
    out.append(["all", f"{s['prompts']} prompts", f"{s['identical']}/{s['compared']} identical",
                _num(s["agreement"]), _num(s["a_logprob"]), _num(s["b_logprob"]), _num(s["a_ttft_ms"], 1),
                _num(s["a_tok_s"], 1), _num(s["b_ttft_ms"], 1), _num(s["b_tok_s"], 1),
                f"{s['failed']} failed" if s["failed"] else ""])
    return out


def markdown(records: list[dict], engines: dict) -> str:
    def cell(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|")

    lines = [f"A: {engines['a']}", f"B: {engines['b']}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows(records)]
    return "\n".join(lines) + "\n"


def as_json(records: list[dict], engines: dict, settings: dict) -> str:
    doc = {"engines": engines, "settings": settings, "prompts": records, "summary": summary(records)}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def as_html(records: list[dict], engines: dict) -> str:
    e = html.escape
    body = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows(records))
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>qwen-chat compare</title>\n"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
            "tr:last-child{font-weight:bold}</style></head><body>\n"
            f"<p>A: {e(engines['a'])}<br>B: {e(engines['b'])}</p>\n<table>\n"
            "<tr>" + "".join(f"<th>{e(h)}</th>" for h in HEADER) + "</tr>\n" + body + "\n</table></body></html>\n")


def render(kind: str, records: list[dict], engines: dict, settings: dict) -> str:
    """`kind`: .md, .json or .html."""
    if kind == ".json":
        return as_json(records, engines, settings)
    if kind == ".html":
        return as_html(records, engines)
    return markdown(records, engines)
