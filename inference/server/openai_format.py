"""One OpenAI reply being built from the server's events: text, stop strings, logprobs, usage, JSON shapes.

`Reply.feed(events)` takes a request's protocol events (token / logprobs / done / error, as app.py
sends them to a connection) and returns the new text and logprob entries to send; the `*_chunk` and
`*_response` methods shape them as /v1/chat/completions and /v1/completions answers.
"""

from __future__ import annotations

import json
import math
import time

from inference.server.openai_schema import ApiRequest
from inference.tokenizer import StreamDecoder

MIN_LOGPROB = -9999.0  # JSON has no -inf: a token the model rules out gets this, as vLLM reports it


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was found: then nothing after it is sent)."""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _lp(v: float) -> float:
    return v if math.isfinite(v) else MIN_LOGPROB


class Reply:
    def __init__(self, api: ApiRequest, tokenizer, model: str):
        self.api, self.tok, self.model = api, tokenizer, model
        self.id = api.request.id
        self.created = int(time.time())
        self.stop = StopMatcher(api.stop)
        self.parts: list[str] = []  # text sent so far (without the echoed prompt)
        self.completion_tokens = 0
        self.stopped = False  # a stop string ended the reply: the engine request was cancelled
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.error: dict | None = None  # the request's error event, if it failed
        self.raw_chars = 0  # characters of the generated text before stop-string cuts (text_offset)
        self._pending_lps: list | None = None
        self.prompt_lps: list | None = None
        self._template: list[str] | None = None

    # -- events -> news ------------------------------------------------------------------------------------
    def feed(self, events: list[dict]) -> tuple[str, list[tuple[int, tuple, int]]]:
        """New text and new (token id, (logprob, alternatives), text offset) entries from `events`."""
        text, entries = "", []
        for ev in events:
            kind = ev.get("event")
            if kind == "logprobs":
                self._pending_lps = ev.get("token")
                if ev.get("prompt") is not None:
                    self.prompt_lps = ev["prompt"]
            elif kind == "token" and not self.stopped and not self.api.echo_only:
                ids, lps, self._pending_lps = ev["token_ids"], self._pending_lps, None
                if lps is not None:
                    entries += [(i, lp, self.raw_chars) for i, lp in zip(ids, lps)]
                self.completion_tokens += len(ids)
                self.raw_chars += len(ev["text"])
                out, self.stopped = self.stop.push(ev["text"])
                text += out
                if self.stopped:
                    self.finish_reason = "stop"
            elif kind == "done":
                if not self.stopped:
                    text += self.stop.flush()
                    self.finish_reason = "length" if self.api.echo_only else ev.get("finish_reason", "stop")
                if self.finish_reason == "cancelled":
                    self.finish_reason = "stop"
                u = ev.get("usage") or {}
                prompt = int(u.get("prompt_tokens") or 0)
                self.usage = {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                              "total_tokens": prompt + self.completion_tokens}
                if u.get("cached_tokens") is not None:
                    self.usage["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"]}
            elif kind == "error":
                self.error = ev
        if text:
            self.parts.append(text)
        return text, entries

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> bool:
        return self.usage is not None or self.error is not None

    # -- logprobs shapes -----------------------------------------------------------------------------------
    def _piece(self, token_id: int) -> tuple[str, list[int]]:
        raw = self.tok.decode_bytes([token_id])
        return raw.decode("utf-8", errors="replace"), list(raw)

    def chat_logprobs(self, entries) -> dict | None:
        if self.api.logprobs is None:
            return None
        content = []
        for tid, (lp, alts), _ in entries:
            token, raw = self._piece(tid)
            top = []
            for aid, alp in alts:
                atok, araw = self._piece(aid)
                top.append({"token": atok, "logprob": _lp(alp), "bytes": araw})
            content.append({"token": token, "logprob": _lp(lp), "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def legacy_logprobs(self, entries, offset: int = 0) -> dict | None:
        """Completions' shape; each top_logprobs dict also holds the chosen token, as OpenAI's does."""
        if self.api.logprobs is None:
            return None
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for tid, lp_alts, at in entries:
            token = self._piece(tid)[0]
            out["tokens"].append(token)
            out["text_offset"].append(offset + at)
            if lp_alts is None:  # the prompt's first token: nothing before it to score it
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            lp, alts = lp_alts
            out["token_logprobs"].append(_lp(lp))
            top = {self._piece(aid)[0]: _lp(alp) for aid, alp in alts}
            top.setdefault(token, _lp(lp))
            out["top_logprobs"].append(top)
        return out

    def prompt_entries(self, prompt_ids: list[int]) -> tuple[str, list]:
        """The echoed prompt's text and its logprob entries (offsets into that text)."""
        dec, text, entries = StreamDecoder(self.tok), "", []
        lps = self.prompt_lps or [None] * len(prompt_ids)
        for tid, lp in zip(prompt_ids, lps):
            entries.append((tid, lp, len(text)))
            text += dec.push([tid])
        return text + dec.flush(), entries

    # -- answers -------------------------------------------------------------------------------------------
    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chat_chunk(self, delta: dict, entries=(), finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": self.chat_logprobs(entries) if entries else None,
                  "finish_reason": finish}
        out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if self.api.include_usage:
            out["usage"] = None
        return out

    def completion_chunk(self, text: str, logprobs: dict | None = None, finish: str | None = None) -> dict:
        out = {**self._head("text_completion"),
               "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if self.api.include_usage:
            out["usage"] = None
        return out

    def text_json(self, text: str) -> str:
        """JSON of a stream chunk holding only text: the hot path fills a template instead of encoding a dict."""
        if self._template is None:
            mark = "\x00"
            chunk = self.chat_chunk({"content": mark}) if self.api.kind == "chat" else self.completion_chunk(mark)
            self._template = dumps(chunk).split(dumps(mark))
        if len(self._template) != 2:  # the mark also elsewhere (not expected): encode the whole chunk
            return dumps(self.chat_chunk({"content": text}) if self.api.kind == "chat" else self.completion_chunk(text))
        return self._template[0] + dumps(text) + self._template[1]

    def usage_chunk(self) -> dict:
        obj = "chat.completion.chunk" if self.api.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage}

    def chat_response(self, entries) -> dict:
        msg = {"role": "assistant", "content": self.text, "refusal": None}
        return {**self._head("chat.completion"), "usage": self.usage,
                "choices": [{"index": 0, "message": msg, "logprobs": self.chat_logprobs(entries),
                             "finish_reason": self.finish_reason}]}

    def completion_response(self, prompt_ids: list[int], entries) -> dict:
        text, lps = self.text, None
        if self.api.echo:
            ptext, pentries = self.prompt_entries(prompt_ids)
            text = ptext + text
            lps = self.legacy_logprobs(pentries + [(t, lp, len(ptext) + at) for t, lp, at in entries])
        else:
            lps = self.legacy_logprobs(entries)
        return {**self._head("text_completion"), "usage": self.usage,
                "choices": [{"index": 0, "text": text, "logprobs": lps, "finish_reason": self.finish_reason}]}
