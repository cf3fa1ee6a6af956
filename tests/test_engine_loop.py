"""The server's engine thread turns the engine's refusals into protocol error codes by their type."""

import threading

import pytest

from inference import protocol as P
from inference.config import EngineConfig, SamplingParams
from inference.engine.llm_engine import LLMEngine
from inference.errors import PromptTooLong
from inference.server.engine_loop import EngineLoop


def test_refusals_carry_the_code_of_their_type(tiny_model):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=2,
                                    max_model_len=64))
    with pytest.raises(PromptTooLong, match="64; shorten it"):
        engine.add_request([1] * 64)
    outputs, refused, done = [], threading.Event(), threading.Event()

    def on_outputs(outs):
        outputs.extend(outs)
        if len(outputs) >= 3:
            refused.set()

    loop = EngineLoop(lambda progress: engine, lambda fn, *a: fn(*a), lambda *a: None, lambda e: None,
                      on_outputs, lambda *a: None, done.set)
    loop.start()
    params = SamplingParams(max_new_tokens=60)
    loop.add("long", [1] * 64, params)  # over max_model_len
    loop.add("vocab", [10 ** 9], params)  # outside the vocabulary
    loop.add("blocks", [1] * 8, params)  # fits the window, not the 2-block cache
    assert refused.wait(60)
    loop.stop()
    assert done.wait(60)
    codes = {o.request_id: (o.error_code, o.error) for o in outputs}
    assert codes["long"][0] == P.PROMPT_TOO_LONG and "context window is 64" in codes["long"][1]
    assert codes["vocab"][0] == P.BAD_REQUEST
    assert codes["blocks"][0] == P.BAD_REQUEST and "KV blocks" in codes["blocks"][1]
