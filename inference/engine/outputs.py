"""What `LLMEngine.step` returns for a request: its new tokens, and at the end why it finished and its usage."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_ms: float
    decode_tok_s: float


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    usage: Usage | None = None
    logits: torch.Tensor | None = None
    logprobs: list | None = None  # per new token: (log p, [(id, log p), ...]) when params.logprobs is set
    prompt_logprobs: list | None = None  # with the first token: per prompt token, None for the first one
