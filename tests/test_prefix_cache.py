"""Prefix caching in memory: multi-turn hits, the last prompt token recomputed, LRU eviction, NTK salt,
and greedy float32 outputs with cache hits equal to outputs with caching off."""

from __future__ import annotations

import pytest

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.engine.sequence import Sequence

BS = 8
USERS = ["Hello there, tell me a story about prefix caching.", "And then what happened to the blocks?",
         "Why did the cache keep them?"]


def make_engine(model, **kw) -> LLMEngine:
    kw.setdefault("num_kv_blocks", 64)
    return LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32", block_size=BS, **kw))


def run(engine: LLMEngine, prompt: list[int], n: int):
    """Greedy reply ids and usage of one request."""
    rid = engine.add_request(prompt, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))
    toks, usage = [], None
    while engine.has_unfinished():
        for o in engine.step():
            if o.request_id == rid:
                toks += o.new_token_ids
                usage = o.usage if o.finished else usage
    return toks, usage


def reply_len(prompt_len: int) -> int:
    """13 or 14 tokens, so that prompt + reply never ends exactly on a block boundary: the last reply
    token's K/V is never computed (nothing is generated after it), so such a block could not be full."""
    return 13 if (prompt_len + 13) % BS else 14


def converse(engine: LLMEngine, users=USERS, replies=None):
    """Turns of one conversation: [(prompt, reply, usage)], each prompt built from the stored reply ids.
    With `replies`, those ids are the history (to replay a conversation on another engine)."""
    msgs, turns = [], []
    for i, text in enumerate(users):
        msgs.append({"role": "user", "content": text})
        prompt = engine.tokenizer.chat_ids(msgs)
        reply, usage = run(engine, prompt, reply_len(len(prompt)))
        history = replies[i] if replies is not None else reply
        msgs.append({"role": "assistant", "content": "", "token_ids": history})
        turns.append((prompt, reply, usage))
    return turns


@pytest.fixture(scope="module")
def uncached(tiny_model):
    """The reference conversation with prefix caching off."""
    turns = converse(make_engine(tiny_model, enable_prefix_caching=False))
    assert all(t[2].cached_tokens == 0 for t in turns)
    return turns


@pytest.fixture(scope="module")
def cached(tiny_model):
    return converse(make_engine(tiny_model))


def test_turn2_hits_every_full_block_of_turn1(cached):
    (p1, r1, u1), (p2, _, u2) = cached[0], cached[1]
    assert p2[:len(p1) + len(r1)] == p1 + r1  # token-identical history
    assert u1.cached_tokens == 0
    assert u2.cached_tokens >= (len(p1) + len(r1)) // BS * BS
    assert u2.cached_tokens == (len(p1) + len(r1) - 1) // BS * BS  # every computed full block, nothing more
    assert u2.prompt_tokens == len(p2)


def test_greedy_outputs_with_hits_equal_outputs_without_cache(cached, uncached):
    assert [t[0] for t in cached] == [t[0] for t in uncached]
    assert [t[1] for t in cached] == [t[1] for t in uncached]
    assert all(t[2].cached_tokens > 0 for t in cached[1:])


def test_last_prompt_token_is_always_recomputed(tiny_model):
    engine = make_engine(tiny_model)
    prompt = list(range(1000, 1000 + 4 * BS))  # exactly 4 full blocks
    first, u1 = run(engine, prompt, 5)
    again, u2 = run(engine, prompt, 5)
    assert u1.cached_tokens == 0 and u2.cached_tokens == 3 * BS  # the 4th block holds the last token
    assert again == first
    _, u3 = run(engine, prompt + [7, 8, 9], 2)
    assert u3.cached_tokens == 4 * BS


def cached_prefix(engine: LLMEngine, ids: list[int]) -> int:
    """Tokens a request for `ids` would find in memory (a probe: nothing is allocated)."""
    return len(engine.block_manager.match_prefix(Sequence("probe", ids, SamplingParams()))) * BS


def test_freed_blocks_are_evicted_least_recently_used(tiny_model):
    engine = make_engine(tiny_model, num_kv_blocks=12)
    a, b = list(range(2000, 2000 + 5 * BS)), list(range(3000, 3000 + 4 * BS))
    run(engine, a + [1], 1)  # 6 blocks, 5 of them full
    run(engine, b + [1], 1)  # 5 blocks, 4 full; one block never used
    _, ua = run(engine, a + [3], 1)  # a is used again: b is now the least recently used
    assert ua.cached_tokens == 5 * BS
    run(engine, list(range(4000, 4000 + 4 * BS)), 1)  # 4 blocks: 2 without content, then b's tail
    assert cached_prefix(engine, a + [0]) == 5 * BS
    assert cached_prefix(engine, b + [0]) == 2 * BS  # b lost its last 2 blocks (a tail goes first)
    assert engine.stats()["kv_blocks_used"] == 0


def test_prefix_under_another_ntk_alpha_is_not_reused(tiny_model):
    engine = make_engine(tiny_model)  # tiny_model's seq_length is 256: longer prompts get alpha > 1
    assert engine.model_config.ntk_alpha(300) > 1.0
    long = [5000 + i for i in range(300)]
    run(engine, long, 1)
    _, short = run(engine, long[:200], 1)
    _, same = run(engine, long + [9], 1)
    assert short.cached_tokens == 0
    assert same.cached_tokens == 300 // BS * BS
