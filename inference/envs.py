"""The QWEN_CHAT_* environment variables the engine reads, each read once, here, when this is imported.

Code reads them as `envs.NAME` where it needs them (so a test can monkeypatch the attribute). Standard
library only: the torch-free client side imports this too. Two more are read where they are used, because
their readers must not import the engine: QWEN_CHAT_SESSIONS_DB, the chats' SQLite file (sessions/schema.py),
and QWEN_CHAT_MODEL as the app's default --model (tui/cli.py).
"""

from __future__ import annotations

import os
import sys

# The default --model of the engine commands: a checkpoint directory, an alias (7b, 14b-chat, ...) or demo.
MODEL: str = os.environ.get("QWEN_CHAT_MODEL", "demo")

# Where an alias is looked for before the Hugging Face cache: MODEL_DIR/14b-chat or MODEL_DIR/Qwen-14B-Chat.
MODEL_DIR: str | None = os.environ.get("QWEN_CHAT_MODEL_DIR") or None

# Where the demo checkpoint is built and kept (default: $XDG_CACHE_HOME/qwen-chat/demo).
DEMO_DIR: str | None = os.environ.get("QWEN_CHAT_DEMO_DIR") or None

# Set (to anything): CUDA runs torch's paths instead of the Triton kernels, to rule the kernels out.
NO_TRITON: bool = bool(os.environ.get("QWEN_CHAT_NO_TRITON"))

# 0: small prefill steps run eagerly instead of replaying a graph one row per token (no grouped graphs).
ROW_PREFILL: bool = os.environ.get("QWEN_CHAT_ROW_PREFILL") != "0"

# 0: no kernel warm-up at engine start on CUDA (engine/warmup.py); the first turns then load kernels.
WARMUP: bool = os.environ.get("QWEN_CHAT_WARMUP") != "0"

# 0: the decode graphs get their inputs and give back their tokens by copies, instead of their first and
# last kernels reading and writing pinned host memory directly (the fallback path, covered by the GPU tests).
MAPPED_IO: bool = os.environ.get("QWEN_CHAT_MAPPED_IO", "1") != "0"


def rank() -> int:
    """This process's rank: its process group's when one is up, else torchrun's RANK (0 outside torchrun).
    Read at each call, and torch-free: without torch loaded no process group can be up."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))
