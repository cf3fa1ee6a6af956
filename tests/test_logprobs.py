"""The engine's log-probabilities (SamplingParams.logprobs / prompt_logprobs): raw model logprobs, i.e.
log_softmax in float32 of the logits the sampler is given, before repetition penalty and temperature;
equal to the engine's own logits over the whole sequence, also when the prompt is prefilled in chunks."""

from __future__ import annotations

import pytest
import torch

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.errors import UserError


@pytest.fixture(scope="module")
def chunked(tiny_model):
    """Prefill in chunks of 16 tokens, so a prompt's logprobs come from several steps."""
    return LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=64,
                                  max_num_batched_tokens=16))


def run(engine, prompt, params):
    rid = engine.add_request(prompt, params)
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == rid]
    return outs


def reference(engine, ids) -> torch.Tensor:
    _, logits = engine.generate_with_logits([ids], SamplingParams(max_new_tokens=1, logits="all"))
    return torch.log_softmax(logits[0].float(), -1)  # row i scores token i + 1


def test_prompt_and_sampled_logprobs_are_the_raw_model_ones(chunked):
    prompt = list(range(300, 345))  # 45 tokens: three prefill chunks
    params = SamplingParams(max_new_tokens=5, temperature=0.7, top_k=40, repetition_penalty=1.3, seed=3,
                            ignore_eos=True, logprobs=2, prompt_logprobs=1)
    outs = run(chunked, prompt, params)
    new = [t for o in outs for t in o.new_token_ids]
    assert len(new) == 5 and [len(o.logprobs) for o in outs] == [1] * 5
    ref = reference(chunked, prompt + new)
    plp = outs[0].prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None and all(o.prompt_logprobs is None for o in outs[1:])
    for i in range(1, len(prompt)):
        lp, alts = plp[i]
        assert lp == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
        assert alts[0][0] == ref[i - 1].argmax().item() and len(alts) == 1
    for j, o in enumerate(outs):
        lp, alts = o.logprobs[0]
        row = ref[len(prompt) - 1 + j]
        assert lp == pytest.approx(row[new[j]].item(), abs=1e-4)  # not the penalized, tempered distribution
        assert [a for a, _ in alts] == row.topk(2).indices.tolist()


def test_prompt_logprobs_never_come_from_the_prefix_cache(chunked):
    prompt = list(range(500, 540))
    run(chunked, prompt, SamplingParams(max_new_tokens=1))  # caches the prompt's blocks
    outs = run(chunked, prompt, SamplingParams(max_new_tokens=1, prompt_logprobs=0))
    assert outs[-1].usage.cached_tokens == 0
    assert all(e is not None for e in outs[0].prompt_logprobs[1:])
    hit = run(chunked, prompt, SamplingParams(max_new_tokens=1, logprobs=0))  # sampled logprobs only: cache hits
    assert hit[-1].usage.cached_tokens == 32 and hit[-1].prompt_logprobs is None


@pytest.mark.parametrize("value", [-1, 21, 1.5, True])
def test_logprobs_counts_are_checked(value):
    with pytest.raises(UserError, match="logprobs must be an integer in 0..20"):
        SamplingParams(logprobs=value)
    with pytest.raises(UserError, match="prompt_logprobs must be an integer in 0..20"):
        SamplingParams(prompt_logprobs=value)


@pytest.mark.gpu
def test_cuda_logprobs_beside_a_lookahead_batch(tiny_model):
    """On CUDA (graphs, decode lookahead): a request asking for logprobs, batched with greedy ones that
    take the lookahead path, gets the logprobs of the engine's own logits; the others' tokens do not
    change for its presence."""
    e = LLMEngine(EngineConfig(model=str(tiny_model), device="cuda", dtype="float32", num_kv_blocks=512,
                               max_num_seqs=16))
    assert e.lookahead is not None
    others = [[9707, 11, 847, 829, 374], list(range(3000, 3040))]
    plain = SamplingParams(max_new_tokens=16, ignore_eos=True)
    alone = e.generate(others, plain)
    prompt = list(range(700, 730))
    asks = SamplingParams(max_new_tokens=16, ignore_eos=True, logprobs=3, prompt_logprobs=3)
    ids = [e.add_request(p, plain) for p in others] + [e.add_request(prompt, asks)]
    got = {i: [] for i in ids}
    lps, plp = [], None
    while e.has_unfinished():
        for o in e.step():
            got[o.request_id] += o.new_token_ids
            lps += o.logprobs or []
            plp = o.prompt_logprobs if o.prompt_logprobs is not None else plp
    assert [got[i] for i in ids[:2]] == alone
    new = got[ids[2]]
    ref = reference(e, prompt + new)
    assert len(lps) == len(new) == 16 and len(plp) == len(prompt)
    for j, (lp, alts) in enumerate(lps):
        assert lp == pytest.approx(ref[len(prompt) - 1 + j, new[j]].item(), abs=1e-3)
        assert alts[0][0] == new[j]  # greedy: the chosen token is the most likely one
    for i in range(1, len(prompt)):
        assert plp[i][0] == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-3)
