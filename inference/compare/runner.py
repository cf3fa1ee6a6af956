"""One prompt through both engines: greedy replies, then B's reply scored under A (prompt_logprobs).

Every failure of one side (a refused prompt, an engine that went away) is kept in that side's record
as `error`; the other side and the next prompts go on.
"""

from __future__ import annotations

from inference.client import EngineClient, EngineError, EngineUnavailable
from inference.compare.metrics import agreement, first_difference, mean
from inference.compare.prompts import Prompt


def _prompt_request(client: EngineClient, p: Prompt) -> dict:
    return {"messages": p.messages} if p.messages is not None else {"prompt_ids": client.tokenize(text=p.text)}


def reply(client: EngineClient, p: Prompt, fields: dict) -> dict:
    """A greedy reply with its per-token logprobs: token_ids, text, logprobs, finish_reason, ttft_ms,
    tok_s, completion_tokens; or {"error": "..."}."""
    ids, text, lps = [], [], []
    try:
        for ev in client.generate(**_prompt_request(client, p), logprobs=0, **fields):
            kind = ev.get("event")
            if kind == "logprobs":
                lps += [e[0] for e in ev.get("token") or []]
            elif kind == "token":
                ids += ev.get("token_ids") or []
                text.append(ev.get("text") or "")
            elif kind == "error":
                return {"error": f"{ev.get('message')} ({ev.get('code')})"}
            elif kind == "done":
                usage = ev.get("usage") or {}
                return {"token_ids": ids, "text": "".join(text), "logprobs": lps,
                        "finish_reason": ev.get("finish_reason"), "ttft_ms": usage.get("ttft_ms"),
                        "tok_s": usage.get("decode_tok_s"), "completion_tokens": usage.get("completion_tokens")}
    except (EngineError, EngineUnavailable, ValueError) as e:  # ValueError: the client refused the request
        return {"error": str(e)}
    return {"error": "the engine server ended the stream without a done event"}


def score(client: EngineClient, p: Prompt, continuation: list[int]) -> list[float]:
    """The log-probability of each token of `continuation` after the prompt, under `client`'s engine.
    Raises EngineError / EngineUnavailable / ValueError."""
    if not continuation:
        return []
    prompt = client.tokenize(messages=p.messages) if p.messages is not None else client.tokenize(text=p.text)
    got = None
    for ev in client.generate(prompt_ids=prompt + continuation, max_new_tokens=1, temperature=0,
                              prompt_logprobs=0):
        if ev.get("event") == "logprobs" and ev.get("prompt") is not None:
            got = ev["prompt"]
        elif ev.get("event") == "error":
            raise EngineError(ev.get("message", "unknown error"), ev.get("code", "engine_error"))
    if got is None or len(got) != len(prompt) + len(continuation):
        raise EngineError("the engine server sent no prompt log-probabilities")
    return [e[0] for e in got[len(prompt):]]


def compare_one(a: EngineClient, b: EngineClient, p: Prompt, fields: dict) -> dict:
    """The record of one prompt (see metrics.summary for what the report makes of it)."""
    ra, rb = reply(a, p, fields), reply(b, p, fields)
    rec = {"line": p.line, "prompt": p.text if p.text is not None else p.messages, "a": ra, "b": rb,
           "first_diff": None, "agreement": None, "a_logprob": mean(ra.get("logprobs") or []), "b_logprob": None}
    if "error" in ra or "error" in rb:
        return rec
    rec["first_diff"] = first_difference(ra["token_ids"], rb["token_ids"])
    rec["agreement"] = agreement(ra["token_ids"], rb["token_ids"])
    if rec["first_diff"] is None:  # the same tokens: the same score
        rec["b_logprob"] = rec["a_logprob"]
        return rec
    try:
        rec["b_logprob"] = mean(score(a, p, rb["token_ids"]))
    except (EngineError, EngineUnavailable, ValueError) as e:
        rec["score_error"] = f"scoring B's reply under A failed: {e}"
    return rec
