"""CUDA: the engine (CUDA graphs, graph rows, tensor parallelism) against the oracle (run on the lent GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.support.oracle import rel

pytestmark = pytest.mark.gpu


def _engine(model, dtype, graphs=True):
    from inference.config import EngineConfig
    from inference.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(model), device="cuda", dtype=dtype, num_kv_blocks=512,
                                  cuda_graphs=graphs, max_num_seqs=16))


def test_cuda_engine_matches_oracle(tiny_model):
    from inference.config import SamplingParams
    from tests.support.oracle import hf_forced, hf_greedy, hf_qwen2

    oracle = hf_qwen2(tiny_model)
    prompts = [[9707, 11, 847, 829, 374], list(range(3000, 3100)), [151644, 872, 198, 151643, 42]]
    want = [hf_greedy(oracle, p, 16) for p in prompts]
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True, logits="last")
    e32 = _engine(tiny_model, "float32")
    assert e32.runner.graphs is not None
    assert e32.generate(prompts, greedy) == [w[0] for w in want]
    plain = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)  # decode lookahead on
    assert e32.lookahead is not None
    assert e32.generate(prompts, plain) == [w[0] for w in want]
    e16 = _engine(tiny_model, "bfloat16")
    rid = e16.add_request(prompts[1], greedy)
    toks, logits = [], None
    while e16.has_unfinished():
        for o in e16.step():
            toks += o.new_token_ids
            logits = o.logits if o.finished else logits
    assert rel(logits, want[1][1]) < 3e-2, rid
    # bf16 breaks some near-ties of a random model otherwise than float32 does, and greedy text then drifts:
    # at each step the oracle, fed the engine's own tokens, picks the engine's token
    assert sum(a == b for a, b in zip(toks, hf_forced(oracle, prompts[1], toks))) >= 13


def test_small_prefill_runs_as_graph_rows_and_matches_oracle(tiny_model, monkeypatch):
    """A prefill step of at most the largest graph bucket's tokens replays a graph with one row per token
    (ModelRunner.prefill_as_decode_rows): the grouped graphs, or the decode graphs where groups save nothing.
    float32 greedy tokens equal the oracle's for a fresh prompt, for a next turn on top of a cached prefix
    batched with a new prompt, and for one-token prompts; QWEN_CHAT_ROW_PREFILL=0 takes the eager path."""
    from inference import envs
    from inference.config import EngineConfig, SamplingParams
    from inference.engine import model_runner
    from inference.engine.llm_engine import LLMEngine
    from tests.support.oracle import hf_greedy, hf_qwen2

    # a small budget of context reads, so that rows alone would read too much (tiny_model's seq_length is 256)
    monkeypatch.setattr(model_runner, "ROW_PREFILL_READS", 3000)
    oracle = hf_qwen2(tiny_model)
    e = LLMEngine(EngineConfig(model=str(tiny_model), device="cuda", dtype="float32", num_kv_blocks=512,
                               max_num_seqs=128))
    plans, as_decode_rows = [], e.runner.prefill_as_decode_rows

    def spy(plan):  # each prefill step's row plan, None where it ran eagerly
        plans.append(as_decode_rows(plan))
        return plans[-1]

    monkeypatch.setattr(e.runner, "prefill_as_decode_rows", spy)
    row_steps = lambda: sum(p is not None for p in plans)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    a, b = list(range(3000, 3100)), [9707, 11, 847, 829, 374]
    first = e.generate([a], greedy)
    assert row_steps() == 1 and first == [hf_greedy(oracle, a, 12)[0]]
    a2 = a + first[0] + list(range(500, 520))  # turn 2: the history is cached, 20 new tokens and more
    rids = [e.add_request(p, greedy) for p in (a2, b)]
    toks, cached = {r: [] for r in rids}, {}
    while e.has_unfinished():
        for o in e.step():
            toks[o.request_id] += o.new_token_ids
            if o.finished:
                cached[o.request_id] = o.usage.cached_tokens
    assert row_steps() == 2 and cached[rids[0]] >= 96 and cached[rids[1]] == 0
    assert [toks[r] for r in rids] == [hf_greedy(oracle, a2, 12)[0], hf_greedy(oracle, b, 12)[0]]
    # both steps in the grouped graphs (each sequence's rows read its context once a group: within the budget);
    # two-token prompts, where groups would take a larger graph, in the decode graphs
    assert [p.graphs for p in plans] == [e.runner.row_graphs] * 2
    twos = [[5, 6], [7, 8], [9, 10]]
    assert e.generate(twos, greedy) == [hf_greedy(oracle, p, 12)[0] for p in twos]
    assert row_steps() == 3 and plans[-1].graphs is e.runner.graphs
    monkeypatch.setattr(envs, "ROW_PREFILL", False)
    assert e.generate([b[::-1]], greedy) == [hf_greedy(oracle, b[::-1], 12)[0]] and row_steps() == 3


@pytest.mark.parametrize("mapped", ["1", "0"])
def test_graphs_equal_eager(tiny_model, monkeypatch, mapped):
    """The decode graphs (inputs and greedy tokens through pinned memory read and written inside the graph,
    or copied: QWEN_CHAT_MAPPED_IO=0) give the tokens of the eager path."""
    from inference import envs
    from inference.config import SamplingParams

    monkeypatch.setattr(envs, "MAPPED_IO", mapped == "1")
    prompts = [[1, 2, 3], list(range(500, 560)), [7] * 33, [42]]
    p = SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True)
    assert _engine(tiny_model, "float16").generate(prompts, p) == \
        _engine(tiny_model, "float16", graphs=False).generate(prompts, p)


@pytest.mark.parametrize("mapped", ["1", "0"])
def test_steady_decode_never_waits_on_the_gpu(tiny_model, monkeypatch, mapped):
    """With CUDA graphs and the lookahead, a decode step makes no blocking CUDA call: the host plans step
    N+1 while the GPU runs step N, and copies only from pinned memory; with mapped step I/O it copies
    nothing at all."""
    from inference import envs
    from inference.config import SamplingParams

    monkeypatch.setattr(envs, "MAPPED_IO", mapped == "1")
    e = _engine(tiny_model, "float16")
    for p in ([1, 2, 3], list(range(500, 560)), [7] * 33):
        e.add_request(p, SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True))
    for _ in range(4):  # prefill, then the first decode steps (the first one samples on the host)
        e.step()
    assert e.lookahead.pending is not None
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            assert len(e.step()) == 3
    finally:
        torch.cuda.set_sync_debug_mode(0)
    # nor a copy from pageable memory, which the driver stages by waiting for the stream (a strided block table
    # copy did, unseen by the sync debug mode)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            assert len(e.step()) == 3
        torch.cuda.synchronize()
    copies = [ev.name for ev in prof.events() if ev.name.startswith("Memcpy")]
    assert not any("Pageable" in c for c in copies), copies
    # Copied I/O: two copies up a step (the header, the block table's rows) and one down (the tokens, which the
    # graph took and left as the next step's ids: no copy into the ids). Mapped: none (kernels in the graph
    # read and write pinned memory).
    want = [0, 0, 0] if mapped == "1" else [6, 3, 0]
    assert [sum(d in c for c in copies) for d in ("HtoD", "DtoH", "DtoD")] == want, copies


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (tensor parallelism over NCCL)")
def test_tp2_on_two_gpus_follows_tp1_and_exits():
    """bench/tp_check.py on the demo shape: tp 2 (torchrun, NCCL, CUDA graphs on both ranks) against tp 1 in
    bf16. The last logits' argmax agree and differ by bf16 rounding only, decode lookahead (every rank
    replaying the step ahead) gives each tp's tokens again, and both jobs end (a hang at teardown fails
    through the timeout)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "bench/tp_check.py", "--shape", "demo", "--tps", "1,2"], cwd=root,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "100 %" and float(cells[4]) < 5e-2 and cells[6] == "yes", row
    assert "tp=1 lookahead same tokens: yes" in r.stdout, r.stdout[-2000:]
