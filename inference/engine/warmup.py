"""Engine-start warm-up (CUDA): run the kernel variants a chat needs before the first user turn.

CUDA loads a kernel's module the first time the process uses it (lazy loading: 17 ms for a flash-attention
variant on an H100), cuDNN builds an execution plan for each new shape, and cuBLAS picks kernels by the
row count. Without a warm-up each first use lands inside some user's turn: the first prompt that extends a
cached prefix past the decode-graph rows, the first long prompt of each cuDNN bucket. So at the end of setup
every rank runs, in the same order:

  - whole-model steps: fresh prefills of a few lengths and prefills that extend a (garbage) cached prefix,
    through `ModelRunner.run`, so each takes the path a real step of its shape takes; one that replays a graph
    of rows also runs kernel by kernel (`run_eager`: the path of the same shape in a busier step);
  - attention alone (no weights, so cheap): flash for fresh chunks and for chunks after a prefix over a grid
    of query and key lengths (flash picks variants by length: even tiles, split-KV and its combine kernel),
    and cuDNN once per bucket up to the step budget (`attention.causal_cudnn`).

It writes K/V only into KV blocks that no sequence owns yet (the block manager is created after it, every
block free, nothing cached; a real step writes every slot it reads), saves nothing to the disk tier and
samples nothing, so it changes no result. QWEN_CHAT_WARMUP=0 (`envs`) turns it off.
"""

from __future__ import annotations

import time

import torch

from inference import envs
from inference.engine.model_runner import ModelRunner, StepPlan
from inference.layers import attention

FRESH = (300, 700, 1100)  # whole-model fresh prefills (shorter ones replay the decode graphs as rows)
EXTEND = ((100, 400), (100, 1700), (200, 1200), (200, 3000), (300, 6000))  # (new tokens, context) steps
ATTN_FRESH = (2, 16, 64, 100, 128, 200, 256, 300, 512, 700, 1000)
ATTN_Q = (8, 32, 100, 128, 200, 256, 400, 700)
ATTN_PAST = (64, 200, 512, 1024, 2000, 4096, 8192)  # cached tokens before the chunk (at most 8192: memory)
MAX_CUDNN_BUCKETS = 32  # cuDNN plans up to 1024 + 31 * 256 = 8960 tokens (tens of ms each on an H100)


def warm_up_engine(runner: ModelRunner, num_blocks: int, max_model_len: int, progress=None) -> float | None:
    """The engine's call at the end of setup (every rank; progress shown by rank 0): the warm-up on CUDA unless
    QWEN_CHAT_WARMUP=0; its seconds, or None."""
    if runner.device.type != "cuda" or not envs.WARMUP:
        return None
    return warm_up(runner, num_blocks, max_model_len, progress if runner.rank == 0 else None)


def step_plans(runner: ModelRunner, limit: int, budget: int) -> list[StepPlan]:
    """Whole-model steps within `limit` context tokens and `budget` tokens a step, on blocks 0, 1, ..."""
    bs, plans, vocab = runner.block_size, [], runner.model_cfg.vocab_size
    shapes = [(n, n) for n in FRESH] + list(EXTEND)
    for q, ctx in shapes:
        if ctx > limit or q > budget:
            continue
        start = ctx - q
        table = list(range(-(-ctx // bs)))
        plans.append(StepPlan([(7 * i) % vocab for i in range(q)], list(range(start, ctx)), [q], [ctx], [table],
                              [1.0], 0, [start == 0], [q - 1]))
    return plans


def attention_shapes(limit: int, budget: int, cudnn: bool) -> list[tuple[int, int]]:
    """(chunk length, context length) of the attention-only calls; context == chunk: a fresh chunk."""
    out = [(n, n) for n in ATTN_FRESH if n <= min(limit, budget)]
    out += [(q, q + p) for q in ATTN_Q for p in ATTN_PAST if q <= budget and q + p <= limit]
    if cudnn:
        top = min(limit, budget, attention.CUDNN_MIN_LEN + (MAX_CUDNN_BUCKETS - 1) * attention.CUDNN_BUCKET)
        out += [(max(b - 1, attention.CUDNN_MIN_LEN), max(b - 1, attention.CUDNN_MIN_LEN))
                for b in range(attention.CUDNN_MIN_LEN, top + 1, attention.CUDNN_BUCKET)]
    return out


@torch.inference_mode()
def attend(runner: ModelRunner, n: int, ctx: int, table: torch.Tensor) -> None:
    """One layer's prefill attention of an n-token chunk at the end of a ctx-token context (writes nothing)."""
    layer = runner.attn_layers[0]
    qkv = torch.randn(n, 3, layer.num_heads, layer.head_dim, dtype=runner.dtype, device=runner.device)
    q, k, v = qkv[:, 0].contiguous(), qkv[:, 1].contiguous(), qkv[:, 2]  # the model's layouts
    attention.prefill_attention(q, k, v, layer.k_cache, layer.v_cache, table, ctx, n == ctx, layer.scale)


def warm_up(runner: ModelRunner, num_blocks: int, max_model_len: int, progress=None) -> float:
    """Run the warm-up (any device); progress(done, total, what) on the way and at the end. Returns seconds."""
    t0 = time.perf_counter()
    limit = min(max_model_len - 1, num_blocks * runner.block_size)
    budget = runner.cfg.max_num_batched_tokens
    cudnn = runner.device.type == "cuda" and runner.dtype != torch.float32
    plans = step_plans(runner, limit, budget)
    shapes = attention_shapes(limit, budget, cudnn)
    total = len(plans) + len(shapes)
    table = torch.arange(-(-limit // runner.block_size), device=runner.device)
    for i, plan in enumerate(plans):
        if progress:
            progress(i, total, "warming up kernels")
        # the path a real step of this shape takes, and kernel by kernel where that is a graph of rows (the
        # same shape in a busier step runs eagerly)
        for run in (runner.run, runner.run_eager) if runner.prefill_as_decode_rows(plan) else (runner.run,):
            logits = run(plan)
            if logits is not None:
                logits.float().argmax(-1).tolist()  # the sampler's greedy path (and waits for the step)
    for i, (n, ctx) in enumerate(shapes, len(plans)):
        if progress and i % 8 == 0:
            progress(i, total, "warming up kernels")
        attend(runner, n, ctx, table)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    seconds = time.perf_counter() - t0
    if progress:
        progress(total, total, f"kernels warmed up in {seconds:.1f} s")
    return seconds
