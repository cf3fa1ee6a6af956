"""CUDA: prompts longer than the step budget (chunked prefill; issue 31.1: a chunk that samples no row sent
zero rows to lm_head, whose skinny matmul's TMA descriptor asserted "shape must be positive"). Run on the
lent GPU: `python -m pytest -q -m gpu tests/test_gpu_long_prompts.py`."""

from __future__ import annotations

import json

import pytest
import torch

from inference.config import EngineConfig, SamplingParams
from tests.support.launches import cuda_kernels
from tests.support.oracle import load_all, reference_logits, rel

pytestmark = pytest.mark.gpu

MAX_LEN = 16384  # the tiny engines' max_model_len (its prompts: 3000, 8000, MAX_LEN - 1 tokens)
LENGTHS = [3000, 8000, MAX_LEN - 1]


def prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed + n)
    return torch.randint(0, 150000, (n,), generator=g).tolist()


def greedy(n: int, logits: str = "none") -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True, logits=logits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_zero_row_matmuls_return_empty_results_without_a_launch(dtype):
    from inference.kernels import decode_matmul
    from inference.kernels.gemv import gemv
    from inference.kernels.skinny import skinny_gemm

    g = torch.Generator(device="cuda").manual_seed(0)
    k, n = 256, 512
    x = torch.empty(0, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g)
    gate_up = torch.randn(2 * n, k, device="cuda", dtype=dtype, generator=g)
    bias = torch.randn(n, device="cuda", dtype=dtype, generator=g)
    norm = (torch.empty(0, n, device="cuda", dtype=dtype), torch.ones(n, device="cuda", dtype=dtype), 1e-6)
    out = {}

    def calls():
        out["plain"] = decode_matmul(x, w)
        out["bias"] = decode_matmul(x, w, bias)
        out["gated"] = decode_matmul(x, gate_up, gated=True)
        out["norm"] = skinny_gemm(x, w, norm=norm)
        for tma in (True, False):
            out[f"argmax{tma}"] = skinny_gemm(x, w, argmax=True, tma=tma)
            out[f"skinny{tma}"] = skinny_gemm(x, w, tma=tma)
        out["gemv"] = gemv(x, w)

    assert cuda_kernels(calls) == []
    for name in ("plain", "bias", "gated", "skinnyTrue", "skinnyFalse", "gemv"):
        assert out[name].shape == (0, n) and out[name].dtype == dtype, name
    assert [t.shape for t in out["norm"]] == [(0, n), (0, n)]
    for tma in (True, False):
        logits, best = out[f"argmax{tma}"]
        assert logits.shape == (0, n) and best is None


def _tiny_engine(model, budget: int):
    from inference.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(model), device="cuda", dtype="float32", num_kv_blocks=2 * MAX_LEN // 16,
                                  max_num_seqs=16, max_model_len=MAX_LEN, max_num_batched_tokens=budget,
                                  enable_prefix_caching=False))  # every run computes its whole prompt


@pytest.fixture(scope="module")
def chunked(tiny_model):
    """float32 (exact to rounding) with the default step budget of 2048 tokens; records its step plans."""
    e = _tiny_engine(tiny_model, 2048)
    e.plans = []
    run = e.runner.run
    e.runner.run = lambda plan: (e.plans.append(plan), run(plan))[1]
    return e


@pytest.fixture(scope="module")
def unchunked(tiny_model):
    return _tiny_engine(tiny_model, MAX_LEN)


def _solo(engine, p, params):
    toks, logits = engine.generate_with_logits([p], params)
    return toks[0], logits[0]


@pytest.mark.parametrize("length", LENGTHS)
def test_long_prompt_alone_equals_the_unchunked_run(chunked, unchunked, length):
    p = prompt(length)
    chunked.plans.clear()
    toks, logits = _solo(chunked, p, greedy(8, "last"))
    assert sum(1 for pl in chunked.plans if not pl.logit_rows) == -(-length // 2048) - 1  # chunks sampling nothing
    want_toks, want_logits = _solo(unchunked, p, greedy(8, "last"))
    assert toks == want_toks and len(toks) == min(8, MAX_LEN - length)
    assert rel(logits, want_logits) < 1e-4
    assert chunked.stats()["kv_blocks_used"] == 0 and chunked.stats()["running"] == 0


def test_3000_token_prompt_matches_the_float_reference(chunked, tiny_model):
    p = prompt(3000)
    toks, logits = _solo(chunked, p, greedy(1, "last"))
    alpha = chunked.model_config.ntk_alpha(len(p))
    ref = reference_logits(load_all(tiny_model), json.loads((tiny_model / "config.json").read_text()), p, alpha)[-1]
    assert rel(logits, ref) < 1e-4
    assert toks == [int(ref.argmax())]


@pytest.mark.parametrize("length", LENGTHS)
def test_long_prompt_beside_decoding_requests_equals_solo_runs(chunked, length):
    short = [[9707, 11, 847, 829, 374], list(range(3000, 3100)), [151644, 872, 198, 42]]
    long_p = prompt(length, seed=1)
    n_short, n_long = 48, min(8, MAX_LEN - length)
    want = [chunked.generate([p], greedy(n))[0] for p, n in zip([*short, long_p], [n_short] * 3 + [n_long])]
    chunked.plans.clear()
    rids = [chunked.add_request(p, greedy(n_short)) for p in short]
    got = {r: [] for r in rids}
    for _ in range(3):  # prefilled, then decoding
        for o in chunked.step():
            got[o.request_id] += o.new_token_ids
    rid = chunked.add_request(long_p, greedy(n_long))
    got[rid] = []
    while chunked.has_unfinished():
        for o in chunked.step():
            got[o.request_id] += o.new_token_ids
    assert [got[r] for r in [*rids, rid]] == want
    assert any(0 < pl.num_decodes == len(pl.logit_rows) < len(pl.q_lens) for pl in chunked.plans)  # mixed, no row
    assert chunked.stats()["kv_blocks_used"] == 0


def test_random_7b_fp16_long_prompts_alone_and_beside_decodes(tmp_path):
    """The issue's setting: 7B shapes in float16 (lm_head through the skinny matmul), the default budget and
    max_model_len (32768): 3000, 8000 and 32767-token prompts finish, alone and beside decoding requests
    that keep streaming a token every step, and the KV cache ends idle."""
    from inference.engine.llm_engine import LLMEngine
    from inference.entrypoints.bench_shapes import SHAPES
    from inference.models.demo import write_checkpoint

    d = write_checkpoint(tmp_path / "random-7b", with_weights=False, **SHAPES["7b"])
    e = LLMEngine(EngineConfig(model=str(d), device="cuda", dtype="float16", num_kv_blocks=2304, max_num_seqs=16,
                               extra={"random_weights": True}))
    assert e.max_model_len == 32768 and e.cfg.max_num_batched_tokens == 2048
    for n in (3000, 8000, e.max_model_len - 1):
        toks = e.generate([prompt(n)], greedy(4))[0]
        assert len(toks) == min(4, e.max_model_len - n), n
    for n in (3000, 8000):
        rids = [e.add_request(prompt(16, seed=s), greedy(40)) for s in range(3)]
        for _ in range(3):
            e.step()
        long_rid = e.add_request(prompt(n, seed=5), greedy(4))
        counts = dict.fromkeys([*rids, long_rid], 0)
        while e.has_unfinished():
            outs = e.step()
            if counts[long_rid] == 0 and any(counts[r] < 37 for r in rids):  # the long prompt is prefilling
                assert {o.request_id for o in outs} >= {r for r in rids if counts[r] < 37}
            for o in outs:
                counts[o.request_id] += len(o.new_token_ids)
        assert [counts[r] for r in rids] == [37] * 3 and counts[long_rid] == 4, counts
    stats = e.stats()
    assert stats["kv_blocks_used"] == 0 and stats["running"] == stats["waiting"] == 0
