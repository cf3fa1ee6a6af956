"""`python -m inference serve`: parse flags, claim the socket on rank 0, run the server.

Ranks above 0 (under torchrun) only run their share of the engine (`start_engine`: a `Worker` until
rank 0 shuts down, then the end of the process).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inference import envs, private_files
from inference.client.launcher import EXIT_ALREADY_RUNNING
from inference.client.paths import default_socket_path, runtime_dir
from inference.client.preflight import check_config
from inference.errors import CliParser, UserError
from inference.server.app import EngineServer
from inference.server.listen import AlreadyRunning, claim_socket, release_socket

log = logging.getLogger("inference.server")
DEFAULT_SEND_LIMIT = 4 << 20


def build_parser() -> argparse.ArgumentParser:
    from inference.entrypoints.cli_args import add_engine_args

    ap = CliParser(prog="qwen-chat serve", allow_abbrev=False,
                   description="Serve the engine on a local Unix socket (docs/protocol.md) "
                               "and, with --http, the OpenAI API (docs/openai.md).")
    add_engine_args(ap, kv_disk_default=True)
    ap.add_argument("--socket", help="socket path (default: $XDG_RUNTIME_DIR/qwen-chat/<model-id>.sock, "
                                     "else ~/.cache/qwen-chat/<model-id>.sock)")
    ap.add_argument("--log-file", help="append stdout and stderr to this file")
    ap.add_argument("--send-buffer-limit", type=int, default=DEFAULT_SEND_LIMIT, metavar="BYTES",
                    help="unsent bytes per connection before its streams are cancelled as too slow "
                         f"(default {DEFAULT_SEND_LIMIT})")
    g = ap.add_argument_group("OpenAI-compatible HTTP (docs/openai.md)")
    g.add_argument("--http", metavar="[HOST:]PORT", help="also serve the OpenAI API over HTTP on this port "
                                                         "(127.0.0.1 unless HOST is given; 0: any free port)")
    g.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/ "
                                                    "(default: $QWEN_CHAT_API_KEY)")
    g.add_argument("--insecure", action="store_true", help="allow --http on a non-loopback address without a key")
    return ap


def _engine_factory(cfg):
    def make(progress):
        from inference.engine.llm_engine import start_engine

        return start_engine(cfg, progress=progress)

    return make


def _redirect_output(log_file: str) -> None:
    """Append fds 1 and 2 to `log_file`, unless they already point at it (the launcher did that). The
    file is opened without following links and must be a regular file of ours (made 0600)."""
    path = Path(log_file).expanduser()
    private_files.private_dir(path.parent, tighten=False)
    fd = private_files.open_private(path, os.O_WRONLY | os.O_APPEND, "log file")
    target = os.fstat(fd)
    for std in (1, 2):
        try:
            st = os.fstat(std)
            same = (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)
        except OSError:
            same = False
        if not same:
            sys.stdout.flush() if std == 1 else sys.stderr.flush()
            os.dup2(fd, std)
    os.close(fd)


def _setup_http(server: EngineServer, host: str, port: int, api_key: str | None) -> None:
    from inference.server import http
    from inference.server.http_bind import bind

    sock, url = bind(host, port)
    http.setup(server, sock, api_key, url)


def main(argv: Sequence[str] | None = None) -> int:
    from inference.entrypoints.cli_args import engine_config_from_args
    from inference.model_path import is_demo, model_id

    args = build_parser().parse_args(argv)
    if args.send_buffer_limit < 4096:
        raise UserError(f"--send-buffer-limit {args.send_buffer_limit} is too small: use at least 4096 bytes")
    cfg = engine_config_from_args(args)
    check_config(Path(cfg.model), cfg.tp)  # before the server listens or logs: one error line
    http = None
    if args.http is not None and envs.rank() == 0:
        from inference.server.http_bind import API_KEY_ENV, check_key_policy, parse_address

        args.api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
        http = parse_address(args.http)
        check_key_policy(http[0], args.api_key, args.insecure)
    elif args.http is None and (args.api_key is not None or args.insecure):
        raise UserError("--api-key and --insecure apply to --http: add --http [HOST:]PORT")
    if envs.rank() != 0:  # no socket, no log: only this rank's share of the engine (it ends the process)
        _engine_factory(cfg)(None)
    mid = model_id(args.model)
    path = Path(args.socket).expanduser().absolute() if args.socket else default_socket_path(
        mid, tp=args.tp, dtype=args.dtype, device=args.device, quant=args.quant)
    private = path.parent == runtime_dir().absolute()  # the default folder: 0700 even if made elsewhere
    private_files.prepare_socket_dir(path, private)  # a shared folder is refused before any file is written there
    if args.log_file:
        _redirect_output(args.log_file)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sock, lock_fd = claim_socket(path, private_dir=private)
    except AlreadyRunning as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    info = {"model": str(cfg.model), "model_id": mid, "device": cfg.device, "dtype": cfg.dtype, "tp": cfg.tp,
            "quant": cfg.quant, "demo": bool(is_demo(cfg.model)), "socket": str(path),
            "log_file": str(Path(args.log_file).expanduser().absolute()) if args.log_file else None}
    server = EngineServer(cfg, info, sock, _engine_factory(cfg), args.send_buffer_limit)
    if http is not None:
        try:
            _setup_http(server, *http, args.api_key)
        except BaseException:
            release_socket(path, None, lock_fd)
            raise
    try:
        code = asyncio.run(server.run())
    finally:
        release_socket(path, None, lock_fd)
    if server.loop is not None and server.loop.load_error is not None:
        raise server.loop.load_error  # bad checkpoint or option: one `error:` line, exit 2 (inference.entrypoints.cli)
    if server.loop is not None and server.loop.is_alive():  # stuck loading or in a collective: do not wait
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
