"""OpenAI request bodies -> the socket protocol's generate request, validated the same way (docs/openai.md).

A /v1/chat/completions or /v1/completions body is checked for the OpenAI fields, translated into a
protocol `generate` object (messages or prompt_ids, plus sampling fields with the model's
generation_config.json defaults) and handed to `protocol.parse_request`, so the HTTP front and the
socket accept and refuse the same values. Anything refused becomes an `ApiError` (status + OpenAI
error body).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace

from inference import protocol as P
from inference.config import MAX_LOGPROBS
from inference.protocol.json_values import is_int, reject_constant, type_name

MAX_STOP = 16  # stop strings per request
MAX_STOP_CHARS = 1000
IGNORED = ("user", "store", "metadata", "service_tier", "parallel_tool_calls")  # accepted, no effect here
EXTRA = ("top_k", "repetition_penalty", "ignore_eos")  # Qwen / vLLM extras beside the OpenAI fields
COMMON = ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
          "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", *EXTRA, *IGNORED)
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
               "response_format")
COMPLETION_FIELDS = (*COMMON, "prompt", "echo", "best_of", "suffix")


class ApiError(Exception):
    """An HTTP error answer in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ApiRequest:
    kind: str  # "chat" | "completion"
    model: str | None
    request: P.GenerateRequest  # what the server runs (sampling holds logprobs / prompt_logprobs too)
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; else alternatives per token
    echo: bool = False  # completions: the prompt comes back before the reply (with its logprobs)
    echo_only: bool = False  # max_tokens 0 with echo: score the prompt, generate nothing


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message[:500], param)


def parse_body(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except RecursionError:
        raise _bad("the request body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(obj, dict):
        raise _bad(f"the request body must be a JSON object, got {type_name(obj)}")
    return obj


def _check_fields(body: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r} for {where} (supported: {', '.join(allowed)}; see docs/openai.md)",
                   unknown[0])


def _unsupported(body: dict) -> None:
    """Fields whose non-default values this server cannot honour: refuse rather than ignore them."""
    if body.get("n") not in (None, 1):
        raise _bad("only n = 1 is supported: send several requests for several choices", "n")
    if body.get("best_of") not in (None, 1):
        raise _bad("only best_of = 1 is supported", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _bad(f"{name} is not supported: use repetition_penalty (an extra body field) instead", name)
    if body.get("logit_bias"):
        raise _bad("logit_bias is not supported", "logit_bias")
    if body.get("suffix") not in (None, ""):
        raise _bad("suffix (insertion) is not supported", "suffix")
    if body.get("tools"):
        raise _bad("tools are not supported: this server does not call functions", "tools")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise _bad("tool_choice is not supported: this server does not call functions", "tool_choice")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _bad("only response_format {\"type\": \"text\"} is supported", "response_format")


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(f"'{name}' must be true or false, got {type_name(v)}", name)
    return v


def _stop(v: object) -> list[str]:
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad(f"'stop' must be a string or an array of strings, got {type_name(v)}", "stop")
    if len(stops) > MAX_STOP:
        raise _bad(f"'stop' has {len(stops)} strings; at most {MAX_STOP} are allowed", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad(f"every stop string must have 1..{MAX_STOP_CHARS} characters", "stop")
    return stops


def _max_tokens(body: dict, allow_zero: bool) -> int | None:
    given = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    if len(set(map(json.dumps, given.values()))) > 1:
        raise _bad("max_tokens and max_completion_tokens differ: give one of them", "max_completion_tokens")
    if not given:
        return None
    name, v = next(iter(given.items()))
    low = 0 if allow_zero else 1
    if not is_int(v) or v < low or v >= 2**31:
        what = "a non-negative integer (0 with echo: score the prompt only)" if allow_zero else "a positive integer"
        raise _bad(f"'{name}' must be {what}, got {type_name(v)} {json.dumps(v)[:40]}", name)
    return v


def _content(n: int, content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # content parts: text only
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{n}].content[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                           "are supported", "messages")
            texts.append(part["text"])
        return "\n".join(texts)
    return content  # a string, or a wrong type the protocol check names


def _messages(v: object) -> list[dict]:
    if not isinstance(v, list):
        raise _bad(f"'messages' must be an array of {{role, content}} objects, got {type_name(v)}", "messages")
    out = []
    for n, m in enumerate(v):
        if not isinstance(m, dict):
            raise _bad(f"messages[{n}] must be an object with role and content, got {type_name(m)}", "messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise _bad(f"messages[{n}]: tool and function calls are not supported", "messages")
        unknown = sorted(set(m) - {"role", "content", "name", "tool_calls", "function_call", "refusal"})
        if unknown:
            raise _bad(f"messages[{n}]: unknown field {unknown[0]!r} (supported: role, content, name)", "messages")
        out.append({"role": role, "content": _content(n, m.get("content"))})
    return out


def _prompt_ids(v: object, tokenizer) -> list[int]:
    if isinstance(v, list) and v and all(isinstance(p, (str, list)) for p in v):
        if len(v) > 1:
            raise _bad(f"'prompt' holds {len(v)} prompts; send one prompt per request", "prompt")
        v = v[0]
    if isinstance(v, str):
        ids = tokenizer.encode(v)
        if not ids:
            raise _bad("'prompt' is empty: give some text or token ids", "prompt")
        return ids
    if isinstance(v, list):
        return v  # token ids: the protocol check names a bad entry
    raise _bad(f"'prompt' must be a string or an array of token ids, got {type_name(v)}", "prompt")


def _logprobs(body: dict, kind: str) -> int | None:
    if kind == "chat":
        top = body.get("top_logprobs")
        if not _bool(body, "logprobs"):
            if top not in (None, 0):
                raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
            return None
        v, name = (0 if top is None else top), "top_logprobs"
    else:
        v, name = body.get("logprobs"), "logprobs"
        if v is None:
            return None
    if not is_int(v) or not 0 <= v <= MAX_LOGPROBS:
        raise _bad(f"'{name}' must be an integer in 0..{MAX_LOGPROBS}, got {json.dumps(v)[:40]}", name)
    return v


def _protocol_error(e: P.ProtocolError) -> ApiError:
    m = re.match(r"'(\w+)'|(messages)\[", e.message)  # protocol messages begin with the field they blame
    name = (m.group(1) or m.group(2)) if m else None
    param = {"max_new_tokens": "max_tokens", "prompt_ids": "prompt"}.get(name, name)
    return _bad(e.message.replace("'max_new_tokens'", "'max_tokens'").replace("'prompt_ids'", "'prompt'"), param)


def parse(body: dict, kind: str, defaults: dict, tokenizer) -> ApiRequest:
    """Validate a chat ("chat") or completions ("completion") body; `defaults` are generation_config's."""
    _check_fields(body, CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS,
                  "/v1/chat/completions" if kind == "chat" else "/v1/completions")
    _unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {type_name(model)}", "model")
    stream, echo = _bool(body, "stream"), kind == "completion" and _bool(body, "echo")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}):
        raise _bad("'stream_options' must be an object with include_usage", "stream_options")
    include_usage = stream and _bool(opts or {}, "include_usage")
    max_tokens = _max_tokens(body, allow_zero=echo)
    logprobs = _logprobs(body, kind)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex  # the answer's id, unique server-wide
    proto = {"op": "generate", "id": rid, **defaults}
    for name in ("temperature", "top_p", "seed", *EXTRA):
        if body.get(name) is not None:
            proto[name] = body[name]
    if max_tokens is not None:
        proto["max_new_tokens"] = max(max_tokens, 1)
    if kind == "chat":
        if "messages" not in body:
            raise _bad("'messages' is required", "messages")
        proto["messages"] = _messages(body["messages"])
    else:
        if "prompt" not in body:
            raise _bad("'prompt' is required", "prompt")
        proto["prompt_ids"] = _prompt_ids(body["prompt"], tokenizer)
    try:
        req = P.parse_request(proto)
    except P.ProtocolError as e:
        raise _protocol_error(e) from None
    req = replace(req, sampling={**req.sampling, "logprobs": logprobs,
                                 "prompt_logprobs": logprobs if echo else None})
    return ApiRequest(kind, model, req, stream, include_usage, _stop(body.get("stop")), logprobs, echo,
                      echo and max_tokens == 0)
