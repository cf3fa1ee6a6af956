"""Drive the engine for an eval: add requests, step until all are done, hand each finished one back.

Requests are added up front (continuous batching does the rest); `window_tokens` caps the prompt
tokens in flight, for requests whose finishing output carries all-position logits ([len, vocab]).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inference import envs
from inference.config import SamplingParams
from inference.errors import UserError


@dataclass
class EvalRequest:
    item_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class Finished:
    item_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str | None
    logits: object  # torch.Tensor | None


get_rank = envs.rank  # this process's rank (0 outside torchrun)


def open_engine(cfg, progress=None):
    """An `LLMEngine` for `cfg`. On a rank > 0 of a torchrun job this call follows rank 0's engine and
    ends the process when it shuts down (`start_engine`)."""
    from inference.engine.llm_engine import start_engine

    return start_engine(cfg, progress=progress)


def close_engine(engine) -> None:
    """Shut the engine down and give its memory back before another one is loaded."""
    if engine is None:
        return
    engine.shutdown()
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def run_requests(engine, requests: Iterable[EvalRequest], on_done: Callable[[Finished], None],
                 progress=None, window_tokens: int | None = None) -> int:
    """Run every request through `engine`; call `on_done` per finished one. Returns the count run."""
    pending = list(requests)
    pending.reverse()  # pop() from the end keeps the given order
    inflight: dict[str, tuple[EvalRequest, list[int]]] = {}
    inflight_tokens = 0
    done = 0
    try:
        while pending or inflight:
            while pending and (window_tokens is None or not inflight
                               or inflight_tokens + len(pending[-1].prompt_ids) <= window_tokens):
                req = pending.pop()
                try:
                    rid = engine.add_request(req.prompt_ids, req.params, request_id=f"eval-{req.item_id}")
                except UserError as e:
                    raise UserError(f"item {req.item_id}: {e}") from e
                inflight[rid] = (req, [])
                inflight_tokens += len(req.prompt_ids)
            for out in engine.step():
                entry = inflight.get(out.request_id)
                if entry is None:
                    continue
                req, toks = entry
                toks.extend(out.new_token_ids)
                if not out.finished:
                    continue
                del inflight[out.request_id]
                inflight_tokens -= len(req.prompt_ids)
                if req.params.logits != "none" and out.logits is None:
                    raise RuntimeError(f"engine returned no logits for {req.item_id} "
                                       f"(asked {req.params.logits!r})")
                on_done(Finished(req.item_id, req.prompt_ids, toks, out.finish_reason, out.logits))
                done += 1
                if progress is not None:
                    progress.update()
    except BaseException:
        for rid in list(inflight):
            try:
                engine.abort(rid)
            except Exception:  # noqa: BLE001 - best effort while unwinding
                pass
        raise
    return done
