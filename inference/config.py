"""Settings as dataclasses: the model's published config, sampling, and the engine.

Validation raises `UserError` (a `ValueError`) with a message that says what to do.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference.errors import UserError

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
DEFAULT_STOP_IDS = (IM_END, IM_START, ENDOFTEXT)
DTYPES = ("float32", "float16", "bfloat16")
MAX_LOGPROBS = 20  # most likely alternatives reported beside a token's own log-probability


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a `QWenLMHeadModel` config.json that the forward pass needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_channels: int
    intermediate_size: int  # twice the width of w1 / w2
    seq_length: int
    vocab_size: int
    rotary_emb_base: float = 10000.0
    rotary_pct: float = 1.0
    layer_norm_epsilon: float = 1e-6
    use_dynamic_ntk: bool = True
    use_logn_attn: bool = True
    torch_dtype: str = "bfloat16"
    quantize: str | None = None  # "w8a16" | "w8a8" for quantized checkpoints
    quant_skip: tuple[str, ...] = ()  # module names left in float
    quant_activation: str = "dynamic"  # w8a8 activations: "dynamic" per token, or "static" per tensor (calibrated)

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size // 2

    @property
    def rotary_dim(self) -> int:
        return int(self.kv_channels * self.rotary_pct)

    def ntk_alpha(self, prompt_len: int) -> float:
        """Dynamic-NTK alpha chosen at prefill from the prompt length (1 within seq_length)."""
        if not self.use_dynamic_ntk or prompt_len <= self.seq_length:
            return 1.0
        context = math.log2(prompt_len / self.seq_length) + 1
        return float(max(2 ** math.ceil(context) - 1, 1))

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise UserError(f"{path} not found: a model directory needs the config.json of a Qwen v1 checkpoint")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> ModelConfig:
        archs = raw.get("architectures") or []
        if "QWenLMHeadModel" not in archs and raw.get("model_type") != "qwen":
            raise UserError(
                f"{source}: architecture {archs or raw.get('model_type')!r} is not Qwen v1 (QWenLMHeadModel); "
                "qwen-chat runs Qwen-7B/14B/72B (v1) checkpoints"
            )
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if n not in raw]
        if missing:
            raise UserError(f"{source}: missing {', '.join(missing)}; the file is incomplete, re-download it")
        for n in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "kv_channels", "seq_length", "max_position_embeddings"):
            v = raw.get(n, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{source}: {n} must be a positive integer, got {v!r}; "
                                "the file is damaged, re-download it")
        kw = {k: v for k, v in raw.items() if k in names}
        kw.setdefault("kv_channels", raw["hidden_size"] // raw["num_attention_heads"])
        kw.setdefault("seq_length", raw.get("max_position_embeddings", 2048))
        if raw.get("torch_dtype") is None:
            kw.pop("torch_dtype", None)
        if "quant_skip" in kw:
            kw["quant_skip"] = tuple(kw["quant_skip"])
        cfg = cls(**kw)
        if cfg.num_attention_heads * cfg.kv_channels != cfg.hidden_size:
            raise UserError(f"{source}: num_attention_heads x kv_channels must equal hidden_size")
        return cfg


def check_tp(m: ModelConfig, tp: int) -> None:
    if m.num_attention_heads % tp or m.ffn_size % tp:
        raise UserError(f"--tp {tp} does not divide the model's {m.num_attention_heads} attention heads "
                        f"and {m.ffn_size} MLP columns; use a tensor-parallel size that does (1, 2, 4 or 8)")



def check_tp_devices(tp: int, kind: str, count: int | None) -> None:
    """Refuse a --tp larger than the `count` visible `kind` devices (no limit on the CPU or when unknown)."""
    if kind != "cpu" and count is not None and tp > count:
        raise UserError(f"--tp {tp} needs {tp} {kind} devices but only {count} are visible; lower --tp")

# The range of each real-valued sampling setting, (low, high, low excluded): SamplingParams checks these and
# the socket protocol and the OpenAI schema tell clients the same (sessions/ keeps a copy: it is stdlib-only).
SAMPLING_RANGES = {"temperature": (0.0, 100.0, False), "top_p": (0.0, 1.0, True),
                   "repetition_penalty": (0.0, 10.0, True)}


def in_sampling_range(name: str, value: float) -> bool:
    lo, hi, lo_open = SAMPLING_RANGES[name]
    return (lo < value if lo_open else lo <= value) and value <= hi


def sampling_range_text(name: str) -> str:
    """The range as written in error messages: "[0, 100]", "(0, 1]"."""
    lo, hi, lo_open = SAMPLING_RANGES[name]
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"


@dataclass
class SamplingParams:
    """How one request samples. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = DEFAULT_STOP_IDS
    ignore_eos: bool = False
    logits: str = "none"  # "none" | "last" | "all": also return prompt logits (for eval)
    logprobs: int | None = None  # each new token's log-probability plus this many top alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (no prefix cache for the request)

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        for name in SAMPLING_RANGES:
            if not in_sampling_range(name, float(getattr(self, name))):
                raise UserError(f"{name} must be in {sampling_range_text(name)}, got {getattr(self, name)!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise UserError(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise UserError(f"seed must be an integer, got {self.seed!r}")
        if self.logits not in ("none", "last", "all"):
            raise UserError(f"logits must be none, last or all, got {self.logits!r}")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_LOGPROBS):
                raise UserError(f"{name} must be an integer in 0..{MAX_LOGPROBS} or None, got {v!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def all_rows(self) -> bool:
        """Every prompt position's logits are needed (so none may come from the prefix cache)."""
        return self.logits == "all" or self.prompt_logprobs is not None


@dataclass
class EngineConfig:
    """Everything the engine is started with."""

    model: str  # a resolved model directory
    device: str = "auto"  # auto | cpu | cuda | npu
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    tp: int = 1
    block_size: int = 16
    num_kv_blocks: int | None = None  # explicit KV pool size; else from free memory
    memory_utilization: float = 0.9  # fraction of device memory for weights + KV (GPU/NPU)
    cpu_kv_cache_gb: float = 1.0  # KV pool size on the CPU
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048  # token budget of one step (chunked prefill)
    max_model_len: int | None = None  # default: 4 x seq_length, at most 32768
    enable_prefix_caching: bool = True
    kv_disk_dir: str | None = None  # disk tier of the prefix cache; None = off
    kv_disk_max_gb: float = 8.0
    quant: str | None = None  # None | w8a16 | w8a8: quantize on the fly at load
    cuda_graphs: bool = True
    cpu_threads: int | None = None  # torch's CPU threads; None: engine.device.cpu_threads picks them
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda", "npu"):
            raise UserError(f"unknown device {self.device!r}: use auto, cpu, cuda or npu")
        if self.dtype not in ("auto", *DTYPES):
            raise UserError(f"unknown dtype {self.dtype!r}: use auto, float32, float16 or bfloat16")
        if not isinstance(self.tp, int) or self.tp < 1:
            raise UserError(f"--tp must be a positive integer, got {self.tp!r}")
        if self.tp > 1 and self.tp % 2:
            raise UserError(f"--tp {self.tp}: odd tensor-parallel sizes above 1 are not supported; use 1, 2, 4 or 8")
        if self.block_size not in (8, 16, 32, 64, 128):
            raise UserError(f"block size {self.block_size} not supported: use 16 (default) or 8, 32, 64, 128")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise UserError("--num-kv-blocks must be at least 1")
        if not (0.05 <= self.memory_utilization <= 0.99):
            raise UserError("--gpu-memory-utilization must be between 0.05 and 0.99")
        if self.max_num_batched_tokens < self.block_size:
            raise UserError("--max-num-batched-tokens must be at least the block size")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise UserError(f"--cpu-threads must be a positive integer, got {self.cpu_threads!r}")
        if self.quant not in (None, "w8a16", "w8a8"):
            raise UserError(f"unknown quantization {self.quant!r}: use w8a16 or w8a8")


def generation_defaults(model_dir: str | Path) -> dict:
    """Sampling defaults from generation_config.json (Qwen: top_p 0.8, top_k 0, repetition_penalty 1.1)."""
    path = Path(model_dir) / "generation_config.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    out = {"max_new_tokens": int(raw.get("max_new_tokens", 512)),
           "top_p": float(raw.get("top_p", 1.0)), "top_k": int(raw.get("top_k", 0) or 0),
           "repetition_penalty": float(raw.get("repetition_penalty", 1.0)),
           "temperature": float(raw.get("temperature", 1.0)) if raw.get("do_sample", True) else 0.0}
    return out


def default_kv_disk_dir() -> str:
    """Where the KV disk tier keeps its files unless --kv-disk-dir says otherwise ($XDG_CACHE_HOME/qwen-chat/kv)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(cache / "qwen-chat" / "kv")
