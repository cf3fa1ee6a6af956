"""`qwen-chat`: the chat app, `qwen-chat sessions ...`, and the engine commands (`python -m inference`).

Engine commands replace this process with `python -m inference <cmd> ...`, so the app never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from inference.entrypoints.cli import (
    COMMANDS as ENGINE_COMMANDS,  # `qwen-chat <command>` execs `python -m inference <command>`
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2
        self.exit(2, f"error: {message} (see `qwen-chat --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False,
        prog="qwen-chat",
        description="Chat with Qwen v1 models in the terminal. Engine commands: "
                    + ", ".join(ENGINE_COMMANDS) + "; saved chats: `qwen-chat sessions --help`.",
    )
    p.add_argument("--model", default=os.environ.get("QWEN_CHAT_MODEL") or "demo",
                   help="model directory or alias (7b, 14b, 72b, with -chat; demo = tiny random weights); "
                        "default $QWEN_CHAT_MODEL or demo")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs) when starting the engine")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--quant", default=None, choices=("w8a16", "w8a8"), help="quantize on the fly at load")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "npu"))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--session", metavar="ID", help="resume this session (an id or a unique prefix)")
    group.add_argument("--new", action="store_true", help="start a new session (default: resume the latest)")
    p.add_argument("--socket", help="attach to the engine listening on this Unix socket (never start one)")
    p.add_argument("--db", help="sessions database (default $QWEN_CHAT_SESSIONS_DB or "
                                "$XDG_DATA_HOME/qwen-chat/sessions.db)")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _shared_socket_dir(socket: str) -> str | None:
    from inference.errors import UserError
    from inference.private_files import check_socket_dir

    try:
        check_socket_dir(os.path.dirname(os.path.abspath(socket)))
    except UserError as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ENGINE_COMMANDS:
        os.execv(sys.executable, [sys.executable, "-m", "inference", *argv])
    if argv and argv[0] == "sessions":
        from sessions.cli import main as sessions_main

        return sessions_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option (2, message printed)
        return int(e.code or 0)
    if args.tp < 1:
        return _fail(f"--tp must be a positive integer, got {args.tp}")

    from sessions import SessionError, SessionStore
    from tui.engine_link import EngineOptions

    if args.socket is None:
        from inference.client.preflight import check_start
        from inference.errors import UserError

        try:  # fail here, in one line, for what needs no engine: files, config, --tp, the device
            check_start(args.model, tp=args.tp, device=args.device, dtype=args.dtype, quant=args.quant)
        except UserError as e:
            return _fail(str(e).replace("\n", " "))
    elif os.path.isdir(os.path.dirname(os.path.abspath(args.socket))) and (
            problem := _shared_socket_dir(args.socket)):
        return _fail(problem)  # before "nothing there": the hint would be to serve in that folder
    elif not os.path.exists(args.socket):
        return _fail(f"--socket {args.socket}: nothing there; start an engine with "
                     f"`qwen-chat serve --model M --socket {args.socket}` or leave --socket out")
    try:
        store = SessionStore(args.db)
    except (SessionError, OSError) as e:
        return _fail(f"cannot open the sessions database: {e}")

    from tui.app import ChatApp

    opts = EngineOptions(model=args.model, tp=args.tp, dtype=args.dtype, quant=args.quant, device=args.device,
                         socket=args.socket)
    try:
        app = ChatApp(opts, store, session_id=args.session, new=args.new)
    except SessionError as e:
        store.close()
        return _fail(str(e))
    try:
        app.run()
    finally:
        store.close()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
