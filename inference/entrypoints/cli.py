"""`python -m inference <command>`: the engine side of `qwen-chat` (the app execs into this for engine work).

With `--tp N > 1` and no torchrun environment, the command re-launches itself under torchrun after the
refusals that need no ranks (odd N, N not dividing the heads, more ranks than devices).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from inference import envs
from inference.errors import UserError

COMMANDS = {  # every engine command, `python -m inference <command>` and `qwen-chat <command>` alike
    "generate": ("inference.entrypoints.generate", "main"),
    "serve": ("inference.server", "main"),
    "stop": ("inference.client.stop", "stop_main"),
    "eval": ("inference.eval.cli", "main"),
    "quantize": ("inference.quant.cli", "main"),
    "bench": ("inference.entrypoints.bench", "main"),
    "compare": ("inference.compare.cli", "main"),
}
TORCHRUN_COMMANDS = {"generate", "serve", "eval", "bench"}  # they start ranks: relaunched under torchrun at --tp > 1
PARSERS = {"generate": ("inference.entrypoints.generate", "build_parser"),
           "serve": ("inference.server.serve", "build_parser"), "eval": ("inference.eval.cli", "build_parser"),
           "bench": ("inference.entrypoints.bench", "parse_args")}


def peek_tp(argv: list[str]) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    p.add_argument("--tp", default="1")
    p.add_argument("--reference-tp", default="1")
    a, _ = p.parse_known_args(argv)
    sizes = []
    for flag, value in (("--tp", a.tp), ("--reference-tp", a.reference_tp)):
        try:
            sizes.append(int(value))
        except ValueError:
            raise UserError(f"{flag} must be a positive integer (1, 2, 4 or 8), got {value!r}") from None
    return max(sizes)


def preflight(argv: list[str]) -> None:
    """Refuse bad tensor-parallel setups before any rank starts."""
    from inference.config import ModelConfig, check_tp, check_tp_devices
    from inference.engine.device import device_count
    from inference.entrypoints.cli_args import add_engine_args, engine_config_from_args

    p = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    add_engine_args(p)
    a, _ = p.parse_known_args(argv)
    cfg = engine_config_from_args(a)
    if a.model == "demo":
        from inference.models.demo import ensure_demo

        ensure_demo()
    check_tp(ModelConfig.from_dir(cfg.model), cfg.tp)
    kind = cfg.device
    if kind == "auto":
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    check_tp_devices(cfg.tp, kind, None if kind == "cpu" else device_count(kind))


def check_flags(cmd: str, argv: list[str]) -> None:
    """Parse `cmd`'s flags once before torchrun, so a bad one is one error line, not one per rank plus
    torchrun's traceback."""
    module, func = PARSERS[cmd]
    build = getattr(importlib.import_module(module), func)
    if cmd == "bench":
        build(argv)  # parses (and checks the case list) itself
    else:
        build().parse_args(argv)


def relaunch_under_torchrun(tp: int, argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}",
           "--monitor-interval=0.5", "-m", "inference", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m inference {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        remote = cmd == "generate" and "--connect" in rest  # the server runs torchrun itself
        if (cmd in TORCHRUN_COMMANDS and not remote and "LOCAL_RANK" not in os.environ and "-h" not in rest
                and "--help" not in rest):
            tp = peek_tp(rest)
            if tp > 1:
                check_flags(cmd, rest)
                preflight(rest)
                relaunch_under_torchrun(tp, argv)
        module, func = COMMANDS[cmd]
        rc = getattr(importlib.import_module(module), func)(rest) or 0
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun rank 0: skip teardown (distributed.exit_process)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        return rc
    except UserError as e:
        rank = envs.rank()
        prefix = f"error (rank {rank}): " if rank else "error: "
        print(prefix + str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
