"""One request's state: its tokens, how many have KV in the cache, and its block table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto

from inference.config import SamplingParams


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(eq=False)  # identity: `seq in running` must not compare token lists
class Sequence:
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    ntk_alpha: float = 1.0
    num_prompt_tokens: int = 0
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prefix-cache hit at admission
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of the full, computed blocks
    status: Status = Status.WAITING
    finish_reason: str | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    logits_parts: list = field(default_factory=list)  # prompt logits requested for eval
    prompt_lps: list = field(default_factory=list)  # prompt tokens' log-probabilities (params.prompt_logprobs)
    emitted: int = 0  # generated tokens already reported

    def __post_init__(self):
        self.num_prompt_tokens = self.num_prompt_tokens or len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    def set_prompt_logprobs(self, start: int, lps: list) -> None:
        """Keep the log-probabilities of prompt positions start + 1.. by position, so a preempted request's
        recomputed rows overwrite their entries."""
        if not lps:
            return
        if not self.prompt_lps:
            self.prompt_lps = [None] * self.num_prompt_tokens
        self.prompt_lps[start + 1:start + 1 + len(lps)] = lps

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.token_ids) - 1
