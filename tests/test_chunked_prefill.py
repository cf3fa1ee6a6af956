"""Prompts longer than the step's token budget (chunked prefill), alone and beside decoding requests: the
greedy tokens equal the unchunked run, and a chunk that samples no row never reaches lm_head (on CUDA an
empty lm_head input crashed the skinny matmul's TMA descriptor: issue 31.1)."""

from __future__ import annotations

import pytest
import torch

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine

BUDGET = 32  # max_num_batched_tokens of the chunked engine


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def chunked(tiny_model):
    """A CPU engine with a 32-token step budget; records every step plan and lm_head's row counts."""
    e = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=128,
                               max_num_batched_tokens=BUDGET, enable_prefix_caching=False))
    e.plans, e.head_rows = [], []
    run = e.runner.run
    e.runner.run = lambda plan: (e.plans.append(plan), run(plan))[1]
    e.runner.model.lm_head.register_forward_pre_hook(lambda mod, args: e.head_rows.append(args[0].shape[0]))
    return e


@pytest.mark.parametrize("length", [150, 300])  # 300: past seq_length 256 (dynamic NTK, logn) in chunks
def test_long_prompt_alone_equals_the_unchunked_run(chunked, tiny_engine, length):
    p = prompt(length, seed=length)
    want = tiny_engine.generate([p], greedy(12))
    chunked.plans.clear()
    chunked.head_rows.clear()
    assert chunked.generate([p], greedy(12)) == want
    steps_without_rows = [pl for pl in chunked.plans if not pl.logit_rows]
    assert len(steps_without_rows) == -(-length // BUDGET) - 1  # every chunk but the last samples nothing
    assert chunked.head_rows and min(chunked.head_rows) > 0  # ... and skips lm_head
    assert chunked.block_manager.stats()["kv_blocks_used"] == 0


def test_long_prompt_beside_decoding_requests_equals_solo_runs(chunked, tiny_engine):
    short = [[9707, 11, 847, 829, 374], [151644, 872, 198, 42]]
    long_p = prompt(200, seed=7)
    want = [tiny_engine.generate([p], greedy(n))[0] for p, n in zip([*short, long_p], [30, 30, 10])]
    chunked.plans.clear()
    chunked.head_rows.clear()
    rids = [chunked.add_request(p, greedy(30)) for p in short]
    got = {r: [] for r in rids}
    for _ in range(3):  # the short ones prefilled and decoding
        for o in chunked.step():
            got[o.request_id] += o.new_token_ids
    rid = chunked.add_request(long_p, greedy(10))
    got[rid] = []
    while chunked.has_unfinished():
        for o in chunked.step():
            got[o.request_id] += o.new_token_ids
    assert [got[r] for r in [*rids, rid]] == want
    mixed = [pl for pl in chunked.plans if 0 < pl.num_decodes < len(pl.q_lens)]
    assert len(mixed) >= 200 // BUDGET  # the long prompt's chunks ran beside the decodes
    assert any(len(pl.logit_rows) == pl.num_decodes for pl in mixed)  # a chunk sampling nothing among them
    assert min(chunked.head_rows) > 0
