"""Exactness: the engine against transformers' Qwen2 (same weights) and a formula reference past seq_length."""

from __future__ import annotations

import json

import pytest
import torch

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from tests.support.oracle import hf_greedy, hf_qwen2, load_all, reference_logits

PROMPTS = [
    "Hello, my name is",
    "上海是一座",
    "def fib(n):\n    return",
    "<|endoftext|>tokens after the pad id<|endoftext|>",  # the transformers pad-mask trap
]
N_NEW = 24


def greedy(n=N_NEW, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def oracle(tiny_model):
    return hf_qwen2(tiny_model)


@pytest.fixture(scope="module")
def prompts(tiny_engine):
    tok = tiny_engine.tokenizer
    ids = [tok.encode_special(p) for p in PROMPTS]
    ids.append(tok.chat_ids([{"role": "user", "content": "What is 2 + 2?"}]))
    return ids


@pytest.fixture(scope="module")
def expected(oracle, prompts):
    return [hf_greedy(oracle, p, N_NEW) for p in prompts]


def test_one_token_prompt_batched_with_longer_ones(tiny_engine, oracle):
    want = hf_greedy(oracle, [9], 4)[0]
    assert tiny_engine.generate([[1, 2, 3, 4, 5], [9]], greedy(4))[1] == want


def test_pad_id_prompt_keeps_its_tokens(prompts):
    assert 151643 in prompts[3]


def test_greedy_tokens_and_logits_match_transformers(tiny_engine, prompts, expected):
    for p, (want_tokens, want_logits) in zip(prompts, expected):
        rid = tiny_engine.add_request(p, greedy(logits="last"))
        got, logits = [], None
        while tiny_engine.has_unfinished():
            for out in tiny_engine.step():
                assert out.request_id == rid
                got += out.new_token_ids
                logits = out.logits if out.finished else logits
        assert got == want_tokens
        assert (logits - want_logits).abs().max().item() < 1e-4


def test_batch_of_different_lengths_gives_solo_results(tiny_engine, prompts, expected):
    got = tiny_engine.generate(prompts, greedy())
    assert got == [e[0] for e in expected]


def test_tiny_kv_pool_preempts_and_still_matches(tiny_model, prompts, expected):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=6,
                                    block_size=16, enable_prefix_caching=False))
    got = engine.generate(prompts, greedy())
    assert engine.scheduler.num_preemptions > 0
    assert got == [e[0] for e in expected]
    assert engine.block_manager.num_free == 6


def test_chunked_prefill_matches(tiny_model, prompts, expected):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=64,
                                    max_num_batched_tokens=16, block_size=8))
    long_prompt = prompts[4]
    assert len(long_prompt) > 16
    assert engine.generate([long_prompt], greedy()) == [expected[4][0]]


@pytest.fixture(scope="module")
def formula_ref(tiny_model):
    return load_all(tiny_model), json.loads((tiny_model / "config.json").read_text())


def _long_prompt(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (n,), generator=g).tolist()


@pytest.mark.parametrize("length", [200, 300, 700])
def test_logn_and_dynamic_ntk_match_formula_reference(tiny_engine, formula_ref, length):
    weights, cfg = formula_ref
    prompt = _long_prompt(length)
    alpha = tiny_engine.model_config.ntk_alpha(length)
    assert alpha == {200: 1.0, 300: 3.0, 700: 7.0}[length]
    rid = tiny_engine.add_request(prompt, greedy(4, logits="all"))
    got, logits = [], None
    while tiny_engine.has_unfinished():
        for out in tiny_engine.step():
            got += out.new_token_ids
            logits = out.logits if out.finished else logits
    ref = reference_logits(weights, cfg, prompt, alpha).float()
    assert logits.shape == ref.shape
    assert (logits - ref).abs().max().item() < 2e-4
    # decode keeps the prefill's alpha: recompute the full sequence under it at each step
    ids, want = list(prompt), []
    for _ in range(4):
        nxt = int(reference_logits(weights, cfg, ids, alpha)[-1].argmax())
        want.append(nxt)
        ids.append(nxt)
    assert got == want, rid


def test_prefix_cache_never_reuses_blocks_across_ntk_alpha(tiny_model, formula_ref):
    weights, cfg = formula_ref
    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=128))
    short = _long_prompt(240, seed=3)
    engine.generate([short], greedy(2))
    longer = short + _long_prompt(80, seed=4)  # 320 > seq_length: alpha 3
    rid = engine.add_request(longer, greedy(1, logits="last"))
    outs = [o for _ in range(100) if engine.has_unfinished() for o in engine.step()]
    done = [o for o in outs if o.finished][0]
    assert done.request_id == rid and done.usage.cached_tokens == 0
    ref = reference_logits(weights, cfg, longer, 3.0)[-1].float()
    assert (done.logits - ref).abs().max().item() < 2e-4
    # the same alpha-1 prefix does hit
    again = short + [5, 6, 7]
    rid2 = engine.add_request(again, greedy(1))
    outs = [o for _ in range(100) if engine.has_unfinished() for o in engine.step()]
    assert [o for o in outs if o.finished and o.request_id == rid2][0].usage.cached_tokens == 240 // 16 * 16


def test_step_as_decode_rows_gives_the_prefill_logits(tiny_model):
    """The row form of a step (small prefills replay the CUDA decode graphs so): every token a decode row with
    its causal context length, run here through the CPU decode path, gives the prefill's logits, for a fresh
    prompt and for a chunk on top of cached blocks batched with a decoding sequence."""
    from inference.engine.model_runner import StepPlan, decode_rows

    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=32,
                                    block_size=8))
    runner = engine.runner
    a, b = _long_prompt(27, seed=1), _long_prompt(12, seed=2)
    fresh = StepPlan(a[:20], list(range(20)), [20], [20], [[0, 1, 2]], [1.0], 0, [True], list(range(20)))
    runner.run(StepPlan(b[:11], list(range(11)), [11], [11], [[4, 5]], [1.0], 0, [True], [10]))
    mixed = StepPlan([b[11], *a[20:]], [11, *range(20, 27)], [1, 7], [12, 27], [[4, 5], [0, 1, 2, 3]],
                     [1.0, 1.0], 1, [False, False], list(range(8)))
    for plan in (fresh, mixed):
        want = runner.run(plan)
        rows, where = decode_rows(plan)
        assert rows.num_decodes == len(rows.q_lens) == len(plan.token_ids) and where == list(range(len(where)))
        torch.testing.assert_close(runner.run(rows), want, rtol=1e-4, atol=1e-4)
        # grouped (the CUDA graphs' row groups): each sequence's rows start a group of 8, padded by rows of
        # context 0; the tokens' rows are the same rows as above
        grouped, at = decode_rows(plan, 8)
        starts = [at[sum(plan.q_lens[:i])] for i in range(len(plan.q_lens))]
        assert len(grouped.token_ids) % 8 == 0 and all(s % 8 == 0 for s in starts), starts
        real = [grouped.ctx_lens[i] for i in at]
        assert real == rows.ctx_lens and [grouped.token_ids[i] for i in at] == rows.token_ids
        assert sorted(set(range(len(grouped.ctx_lens))) - set(at)) == [
            i for i, c in enumerate(grouped.ctx_lens) if c == 0]
