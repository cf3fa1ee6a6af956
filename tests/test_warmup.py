"""Engine-start warm-up (engine/warmup.py): it runs on CUDA only, and whatever it runs changes no engine state
and no result. Run here on the CPU by calling it directly (the engine skips it off CUDA)."""

from __future__ import annotations

import dataclasses

import pytest

from inference import envs
from inference.config import EngineConfig, SamplingParams
from inference.engine import warmup
from inference.engine.llm_engine import LLMEngine

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
PROMPT = [(37 * i) % 5000 + 100 for i in range(90)]


def engine(tiny_model, progress=None) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=64),
                     progress=progress)


def chat(e: LLMEngine) -> list[list[int]]:
    """Two turns: the second extends the first's cached prefix."""
    first = e.generate([PROMPT], GREEDY)[0]
    second = e.generate([PROMPT + first + PROMPT[:40]], GREEDY)[0]
    return [first, second]


@pytest.fixture(scope="module")
def reference(tiny_model):
    return chat(engine(tiny_model))


def test_warm_up_leaves_no_state_and_changes_no_result(tiny_model, reference):
    e = engine(tiny_model)
    calls = []
    seconds = warmup.warm_up(e.runner, e.block_manager.num_blocks, e.max_model_len,
                             lambda done, total, what: calls.append((done, total, what)))
    bm = e.block_manager
    assert seconds > 0 and bm.num_free == bm.num_blocks and not bm.cached
    assert all(b.hash is None and b.ref_count == 0 for b in bm.blocks)
    assert not e.seqs and e.stats()["kv_blocks_used"] == 0
    assert chat(e) == reference
    # progress: counted up to its total, then one last line that says how long it took
    total = calls[-1][1]
    assert total > 2 and [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert calls[0][2] == "warming up kernels" and calls[-1][:2] == (total, total)
    assert calls[-1][2].startswith("kernels warmed up in ") and calls[-1][2].endswith(" s")


def test_warm_up_covers_fresh_and_prefix_steps_within_the_cache(tiny_model):
    """Whole-model steps of both kinds (a fresh prefill, one that extends a cached prefix), none longer than
    the cache or the context window, on blocks the cache has."""
    e = engine(tiny_model)
    limit = min(e.max_model_len - 1, e.block_manager.num_blocks * e.runner.block_size)
    plans = warmup.step_plans(e.runner, limit, e.cfg.max_num_batched_tokens)
    assert any(p.no_cached_prefix[0] for p in plans) and any(not p.no_cached_prefix[0] for p in plans)
    for p in plans:
        assert p.ctx_lens[0] <= limit and p.positions[-1] == p.ctx_lens[0] - 1
        assert max(p.block_tables[0]) < e.block_manager.num_blocks
        assert max(p.token_ids) < e.model_config.vocab_size


def test_warm_up_token_ids_fit_a_small_vocabulary(tiny_model):
    """A model whose vocabulary is smaller than the ids a warm-up step would otherwise pick: every id is a
    row of its embedding (on CUDA an id past it is a device-side assert at engine start)."""
    e = engine(tiny_model)
    e.runner.model_cfg = dataclasses.replace(e.runner.model_cfg, vocab_size=1000)  # what the plans read
    plans = warmup.step_plans(e.runner, 4000, 4096)
    assert plans and all(max(p.token_ids) < 1000 for p in plans)


def test_engine_skips_the_warm_up_off_cuda_and_when_turned_off(tiny_model, monkeypatch):
    calls = []
    engine(tiny_model, progress=lambda *a: calls.append(a))
    assert not [c for c in calls if "warm" in c[2]]  # the CPU: nothing to load
    e = engine(tiny_model)
    monkeypatch.setattr(envs, "WARMUP", False)
    monkeypatch.setattr(e.runner, "device", type("D", (), {"type": "cuda"})())
    assert warmup.warm_up_engine(e.runner, 64, e.max_model_len) is None
