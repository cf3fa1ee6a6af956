"""Run under torchrun by test_tp.py: every rank builds the engine; rank 0 writes tokens and logits."""

import json
import sys

import torch

from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine


def main(model: str, prompts_json: str, out: str) -> None:
    prompts = json.loads(prompts_json)
    engine = LLMEngine(EngineConfig(model=model, device="cpu", dtype="float32", tp=int(sys.argv[4]),
                                    num_kv_blocks=128))
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True, logits="last")
    rids = [engine.add_request(p, params) for p in prompts]
    tokens = {r: [] for r in rids}
    logits = {}
    while engine.has_unfinished():
        for o in engine.step():
            tokens[o.request_id] += o.new_token_ids
            if o.finished:
                logits[o.request_id] = o.logits
    torch.save({"tokens": [tokens[r] for r in rids], "logits": torch.stack([logits[r] for r in rids])}, out)
    engine.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
