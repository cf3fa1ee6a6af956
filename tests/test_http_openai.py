"""The OpenAI-compatible HTTP front, driven by the official `openai` package against a real server
(`serve --http 0` on a loopback port, tiny checkpoint, API key from $QWEN_CHAT_API_KEY). One server for
the module; its Unix socket answers stats for the same engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import openai
import pytest
import torch

from inference.client import EngineClient
from inference.config import SamplingParams
from inference.tokenizer import QwenTokenizer
from tests.support.server import CPU_ARGS, start_server, stop_server, wait_ready

KEY = "sk-test-3f9c"
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]
GREEDY = dict(temperature=0, extra_body={"repetition_penalty": 1.0, "ignore_eos": True})


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    sock, log = d / "s.sock", d / "server.log"
    proc = start_server(tiny_model, sock, "--http", "0", env={"QWEN_CHAT_API_KEY": KEY}, log=log)
    try:
        health = wait_ready(sock, proc, log)
        url = health["http"]
        assert url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        yield SimpleNamespace(sock=sock, url=url, proc=proc, log=log, client=client, model=health["model_id"],
                              tok=QwenTokenizer.from_dir(tiny_model))
    finally:
        assert stop_server(proc) == 0, log.read_text()[-2000:]


def idle_stats(sock, timeout=5.0) -> dict:
    with EngineClient(sock) as c:
        deadline = time.monotonic() + timeout
        while True:
            s = c.stats()
            if (s["running"] == 0 and s["requests"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.02)


def post(server, path: str, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method="POST" if data else "GET",
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_greedy_chat_equals_generate_chat_streamed_or_not(server, tiny_model):
    out = subprocess.run([sys.executable, "-m", "inference", "generate", "--model", str(tiny_model), *CPU_ARGS,
                          "--chat", CHAT[0]["content"], "--temperature", "0", "--max-new-tokens", "12", "--json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    c = server.client
    r = c.chat.completions.create(model=server.model, messages=CHAT, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == ref["text"] and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ref["finish_reason"]
    prompt = len(server.tok.chat_ids(CHAT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (prompt, len(ref["token_ids"]), prompt + len(ref["token_ids"]))
    chunks = list(c.chat.completions.create(model=server.model, messages=CHAT, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ref["text"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == ref["finish_reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref["token_ids"])
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the resent chat hit the prefix cache


def test_completion_logprobs_equal_the_engines(server, tiny_engine):
    prompt = [9707, 1879, 11, 419, 374, 264, 1273]
    r = server.client.completions.create(model=server.model, prompt=prompt, max_tokens=6, echo=True, logprobs=3,
                                         **GREEDY)
    lp = r.choices[0].logprobs
    n = len(prompt)
    assert r.usage.prompt_tokens == n and r.usage.completion_tokens == 6 and len(lp.tokens) == n + 6
    out = tiny_engine.generate([prompt], SamplingParams(max_new_tokens=6, ignore_eos=True))[0]
    full = prompt + out
    assert lp.tokens == [server.tok.decode([t]) for t in full]
    assert r.choices[0].text == server.tok.decode(full)
    # the engine's own logits over the whole sequence, log_softmax in float32: row i scores token i + 1
    _, logits = tiny_engine.generate_with_logits([full], SamplingParams(max_new_tokens=1, logits="all"))
    ref = torch.log_softmax(logits[0].float(), -1)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(full)):
        assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, full[i]].item(), abs=1e-4), i
        top = ref[i - 1].topk(3)
        want = {server.tok.decode([t]): v for t, v in zip(top.indices.tolist(), top.values.tolist())}
        assert set(want) <= set(lp.top_logprobs[i]) and len(lp.top_logprobs[i]) <= 4
        for tok, v in want.items():
            assert lp.top_logprobs[i][tok] == pytest.approx(v, abs=1e-4)
    assert lp.text_offset[:2] == [0, len(server.tok.decode(prompt[:1]))]
    # chat logprobs: one entry per generated token, their bytes spell the reply
    ch = server.client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=5, logprobs=True,
                                               top_logprobs=2, **GREEDY)
    content = ch.choices[0].logprobs.content
    assert len(content) == ch.usage.completion_tokens == 5
    assert bytes(b for e in content for b in e.bytes).decode() == ch.choices[0].message.content
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob == pytest.approx(e.logprob) for e in content)


def test_stop_strings_end_the_reply_streamed_or_not(server):
    kw = dict(model=server.model, prompt="Hello world, this", max_tokens=12, **GREEDY)
    full = server.client.completions.create(**kw).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    want = full[:full.index(stop)]
    r = server.client.completions.create(stop=[stop, "never-seen"], **kw)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    assert r.usage.completion_tokens < 12
    chunks = list(server.client.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == want and chunks[-1].choices[0].finish_reason == "stop"
    assert idle_stats(server.sock)["running"] == 0


def test_disconnect_mid_stream_frees_blocks_at_once(server):
    stream = server.client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=400, stream=True,
                                                   **GREEDY)
    it = iter(stream)
    for _ in range(3):
        next(it)
    with EngineClient(server.sock) as c:
        assert c.stats()["running"] == 1
    t0 = time.monotonic()
    stream.close()
    stats = idle_stats(server.sock)
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0 and stats["requests"] == 0, stats
    assert time.monotonic() - t0 < 2.0  # 400 tokens would take far longer: it was cancelled


def test_socket_cancels_by_id_leave_http_requests_alone(server):
    stream = server.client.completions.create(model=server.model, prompt=[4, 5, 6], max_tokens=40, stream=True,
                                              **GREEDY)
    chunks = [next(iter(stream))]
    with EngineClient(server.sock) as c:
        for rid in (1, "1", "r1"):  # ids socket clients use; a cancel of an id not on its connection looks wider
            c.cancel(rid)
    chunks += list(stream)
    assert chunks[0].id.startswith("cmpl-") and chunks[-1].choices[0].finish_reason == "length"


def test_a_client_that_gives_up_waiting_cancels_its_request(server):
    impatient = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):  # not streamed: nothing comes back before the end
        impatient.completions.create(model=server.model, prompt=[5, 6, 7], max_tokens=900, **GREEDY)
    t0 = time.monotonic()
    stats = idle_stats(server.sock)
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0, stats
    assert time.monotonic() - t0 < 1.5


def test_the_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert post(server, "/v1/completions", {"prompt": "x"}, key=None)[0] == 401
    status, health = post(server, "/health", b"", key=None)  # probes need no key
    assert (status, health["status"], health["model"]) == (200, "ready", server.model)
    assert [m.id for m in server.client.models.list()] == [server.model]


BAD = [  # (path, body, status, error code, words of the message, param)
    ("/v1/completions", b"{not json", 400, None, "not valid JSON", None),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found", "'gpt-4' does not exist", "model"),
    ("/v1/completions", {"prompt": "x", "top_p": "high"}, 400, None, "'top_p' must be", "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, None, "'top_p' must be a number in (0, 1]", "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, None, "'max_tokens' must be", "max_tokens"),
    ("/v1/completions", {"prompt": [1, 2, 999999]}, 400, None, "outside the model's vocabulary", None),
    ("/v1/completions", {"prompt": [1] * 1100}, 400, "context_length_exceeded", "1100 tokens", None),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, None, "one prompt per request", "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, None, "n = 1", "n"),
    ("/v1/completions", {"prompt": "x", "temprature": 1}, 400, None, "unknown field 'temprature'", "temprature"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, None, "'logprobs' must be", "logprobs"),
    ("/v1/chat/completions", {"messages": []}, 400, None, "must not be empty", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 400, None, "role", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, None, "not supported", "messages"),
    ("/v1/chat/completions", {"messages": CHAT * 2 + [{"role": "system", "content": "late"}]}, 400, None,
     "system message", None),
    ("/v1/chat/completions", {"messages": CHAT, "stop": [""]}, 400, None, "stop string", "stop"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, None, "needs logprobs", "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "seed": -1}, 400, None, "'seed' must be", "seed"),
    ("/v1/nowhere", {}, 404, "not_found", "/v1/nowhere", None),
]


@pytest.mark.parametrize("path, body, status, code, words, param", BAD)
def test_bad_requests_get_the_openai_error_shape(server, path, body, status, code, words, param):
    got, err = post(server, path, body)
    assert got == status, err
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}, err
    assert words in err["error"]["message"] and (err["error"]["code"], err["error"]["param"]) == (code, param), err
    assert err["error"]["type"] == "invalid_request_error"


def test_the_server_keeps_serving_after_bad_requests(server):
    for path, body, *_ in BAD[:6]:
        post(server, path, body)
    r = server.client.completions.create(model=server.model, prompt="Hi", max_tokens=3, **GREEDY)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_16_concurrent_streaming_clients_get_their_solo_replies(server):
    prompts = [[1000 + 37 * i, 7, 8, 9] for i in range(16)]
    kw = dict(model=server.model, max_tokens=16, **GREEDY)
    solo = [server.client.completions.create(prompt=p, **kw).choices[0].text for p in prompts[:4]]

    async def one(client, p):
        chunks = [c async for c in await client.completions.create(prompt=p, stream=True, **kw)]
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    async def all16():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    got = asyncio.run(all16())
    assert [g[1] for g in got] == ["length"] * 16
    assert [g[0] for g in got[:4]] == solo
    assert len({g[0] for g in got}) == 16
    assert idle_stats(server.sock)["kv_blocks_used"] == 0
