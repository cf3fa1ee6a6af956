"""Resolve `--model` offline: a path, an alias (7b, 14b, 72b, with -chat), or `demo`. No torch here."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from inference import envs
from inference.errors import UserError

ALIASES = {
    f"{size}{suffix}": f"Qwen-{size.upper()}{'-Chat' if suffix else ''}"
    for size in ("7b", "14b", "72b")
    for suffix in ("", "-chat")
}


def demo_dir() -> Path:
    if envs.DEMO_DIR:
        return Path(envs.DEMO_DIR)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "qwen-chat" / "demo"


def is_demo(path: str | Path) -> bool:
    return (Path(path) / "DEMO.md").is_file()


def _hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def _hf_snapshot(repo: str) -> Path | None:
    root = _hf_hub_dir() / f"models--{repo.replace('/', '--')}"
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    ref = root / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if (cand / "config.json").is_file():
            return cand
    found = sorted((p for p in snaps.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def candidates(spec: str) -> list[Path]:
    """Where an alias is looked for, in order."""
    name = ALIASES[spec.lower()]
    out = []
    if envs.MODEL_DIR:
        base = Path(envs.MODEL_DIR)
        out += [base / spec.lower(), base / name]
    out.append(_hf_hub_dir() / f"models--Qwen--{name}")
    return out


def resolve_model(spec: str) -> Path:
    """A model directory for `spec`; never downloads. `demo` returns the demo path (built by the engine)."""
    if spec == "demo":
        return demo_dir()
    if spec.lower() in ALIASES:
        name = ALIASES[spec.lower()]
        looked = candidates(spec)
        for cand in looked[:-1]:
            if (cand / "config.json").is_file():
                return cand
        snap = _hf_snapshot(f"Qwen/{name}")
        if snap is not None:
            return snap
        where = ", ".join(str(p) for p in looked)
        raise UserError(  # one line: the CLIs print it as their one `error:` line
            f"model {spec!r} not found offline (looked in {where}): get the weights with "
            f"`huggingface-cli download Qwen/{name}` (or copy them to "
            f"$QWEN_CHAT_MODEL_DIR/{spec.lower()}), or pass --model /path/to/{name}"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(["demo", *ALIASES])
        raise UserError(f"model {spec!r}: no such directory (aliases: {known})")
    if not path.is_dir():
        raise UserError(f"model {spec!r} is a file: pass the checkpoint directory holding config.json")
    return path.resolve()


def model_id(spec: str) -> str:
    """A short stable id for socket and log names."""
    if spec == "demo" or spec.lower() in ALIASES:
        return spec.lower()
    path = Path(spec).expanduser().resolve()
    slug = re.sub(r"[^a-z0-9._-]+", "-", path.name.lower()).strip("-") or "model"
    return f"{slug[:40]}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
