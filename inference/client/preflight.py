"""Checks that need no engine (and no torch) before an engine start: the app runs them before it opens,
so a missing file, a checkpoint that is not Qwen v1, a --tp the model or the machine cannot take, or a
device that is not there is one `error:` line instead of an engine that fails in the background.

    check_start("14b", tp=2, device="cuda")   # raises UserError saying what to do
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from inference.config import EngineConfig, ModelConfig, check_tp, check_tp_devices
from inference.errors import UserError
from inference.model_path import demo_dir, resolve_model

_NO_GPU = {"cuda": "--device cuda: no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), "
                   "or use --device cpu",
           "npu": "--device npu: torch_npu is not installed or no Ascend NPU is visible (check npu-smi and "
                  "ASCEND_RT_VISIBLE_DEVICES); install torch_npu with CANN, or use --device cpu"}


def _visible(nodes: str, env_var: str) -> int | None:
    """Devices of a kind from their /dev nodes and the visibility variable; None when it cannot be told
    without the vendor's runtime (not Linux, WSL's /dev/dxg, devices named by UUID)."""
    if not sys.platform.startswith("linux") or os.path.exists("/dev/dxg"):
        return None
    try:
        n = sum(1 for p in os.listdir("/dev") if re.fullmatch(nodes, p))
    except OSError:
        return None
    env = os.environ.get(env_var)
    if env is None:
        return n
    count = 0
    for entry in (e.strip() for e in env.split(",")):
        if not entry.isdigit():
            return None if n and entry[:4] in ("GPU-", "MIG-") else count  # the runtime stops at a bad entry
        if int(entry) >= n:
            break
        count += 1
    return count


def device_count(kind: str) -> int | None:
    """How many `kind` ("cuda" | "npu") devices this process would see, or None when unknown."""
    if kind == "cuda":
        return _visible(r"nvidia\d+", "CUDA_VISIBLE_DEVICES")
    if importlib.util.find_spec("torch_npu") is None:
        return 0
    return _visible(r"davinci\d+", "ASCEND_RT_VISIBLE_DEVICES")


def _check_files(model_dir: Path) -> None:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise UserError(f"{index} is not a valid safetensors index ({e}); re-download it") from None
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            raise UserError(f"{model_dir / missing[0]} (listed in the index) is missing; re-download the checkpoint")
    elif not any(model_dir.glob("*.safetensors")):
        what = "PyTorch .bin weights; qwen-chat loads .safetensors (convert them first)" if any(
            model_dir.glob("*.bin")) else "no .safetensors weights; is this a checkpoint directory?"
        raise UserError(f"{model_dir} has {what}")
    if not (model_dir / "qwen.tiktoken").is_file():
        raise UserError(f"{model_dir / 'qwen.tiktoken'} not found: the checkpoint's tokenizer file is missing; "
                        "re-download it")


def check_config(model_dir: Path, tp: int) -> bool:
    """config.json readable and sane, and --tp dividing its heads (UserError otherwise); False for the demo
    before its first start (it is written then)."""
    if model_dir == demo_dir() and not (model_dir / "config.json").exists():
        return False
    try:
        cfg = ModelConfig.from_dir(model_dir)
    except OSError as e:
        raise UserError(f"cannot read {model_dir / 'config.json'}: {e.strerror}") from None
    check_tp(cfg, tp)
    return True


def check_start(model: str, tp: int = 1, device: str = "auto", dtype: str = "auto", quant: str | None = None) -> None:
    """Raise UserError for what would make an engine start fail before it loads anything."""
    model_dir = resolve_model(model)
    EngineConfig(model=str(model_dir), device=device, dtype=dtype, tp=tp, quant=quant)  # names, odd tp
    if check_config(model_dir, tp):
        _check_files(model_dir)
    kind = device
    if kind == "auto":
        cuda, npu = device_count("cuda"), device_count("npu")
        kind = "cuda" if cuda else "npu" if npu else "cpu"
    if kind == "cpu":
        return
    n = device_count(kind)
    if n == 0:
        raise UserError(_NO_GPU[kind])
    check_tp_devices(tp, kind, n)
