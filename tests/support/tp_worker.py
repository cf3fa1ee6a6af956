"""Run under torchrun by test_tp.py and test_quant_tp.py: every rank starts the engine (`start_engine`);
rank 0 writes tokens and logits, the other ranks follow it and end inside `start_engine`. `run_prompts` is
also the tp=1 reference of both tests.

    torchrun ... tp_worker.py MODEL PROMPTS_JSON OUT TP [QUANT]
"""

import json
import sys

import torch

from inference.config import EngineConfig, SamplingParams
from inference.distributed import exit_process
from inference.engine.llm_engine import LLMEngine, start_engine


def run_prompts(engine: LLMEngine, prompts: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """12 greedy tokens per prompt and the last step's logits of each, in prompt order."""
    return engine.generate_with_logits(prompts, SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True,
                                                               logits="last"))


def main(model: str, prompts_json: str, out: str, tp: str, quant: str = "") -> None:
    engine = start_engine(EngineConfig(model=model, device="cpu", dtype="float32", tp=int(tp), num_kv_blocks=128,
                                       quant=quant or None))
    tokens, logits = run_prompts(engine, json.loads(prompts_json))  # rank 0 only
    torch.save({"tokens": tokens, "logits": logits}, out)
    engine.shutdown()
    exit_process(0)  # as the CLI does under torchrun: gloo's threads can abort interpreter teardown (SIGABRT)


if __name__ == "__main__":
    main(*sys.argv[1:])
