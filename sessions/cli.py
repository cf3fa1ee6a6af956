"""`qwen-chat sessions list | show | export | import | delete | fork` (stdlib only)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from sessions.records import SessionError
from sessions.store import SessionStore, default_db_path
from sessions.transfer import pair_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line (exit 2), not the usage block
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    db = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    db.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                    help=f"sessions database (default: $QWEN_CHAT_SESSIONS_DB or {default_db_path()})")
    p = _Parser(prog="qwen-chat sessions", parents=[db], allow_abbrev=False,
                description="List, show, export, import, delete and fork saved chats.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ls = sub.add_parser("list", parents=[db], help="saved sessions, newest first")
    ls.add_argument("--search", "-s", metavar="TEXT",
                    help="only sessions whose title or messages contain TEXT")
    show = sub.add_parser("show", parents=[db], help="print a session's messages")
    show.add_argument("id", help="session id (a unique prefix is enough)")
    ex = sub.add_parser("export", parents=[db], help="write a session as Markdown or JSON")
    ex.add_argument("id")
    ex.add_argument("--format", "-f", choices=("md", "json"), default="md",
                    help="md to read, json to import again (default md)")
    ex.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of standard output")
    im = sub.add_parser("import", parents=[db], help="add a session from a JSON export ('-' reads stdin)")
    im.add_argument("file")
    rm = sub.add_parser("delete", parents=[db], help="delete a session and its messages")
    rm.add_argument("id")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    fk = sub.add_parser("fork", parents=[db], help="copy messages 0..N of a session into a new session")
    fk.add_argument("id")
    fk.add_argument("--at", type=int, required=True, metavar="N", help="last message index to copy (0-based)")
    for sp in sub.choices.values():  # no prefix matching: --s must not mean --search
        sp.allow_abbrev = False
    return p


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _list(store: SessionStore, args) -> int:
    sessions = store.list_sessions(search=args.search)
    if not sessions:
        print(f"no sessions match {args.search!r}" if args.search else
              "no sessions yet: start one with `qwen-chat`")
        return 0
    print(f"{'ID':<12}  {'UPDATED':<16}  {'MSGS':>5}  {'MODEL':<12}  TITLE")
    for s in sessions:
        n, model = store.count_messages(s.id), _one_line(s.model or "-", 12)
        print(f"{s.id:<12}  {_when(s.updated_at):<16}  {n:>5}  {model:<12}  {s.title}")
    return 0


def _show(store: SessionStore, args) -> int:
    s = store.get_session(store.resolve_id(args.id))
    print(f"{s.title}\n  id {s.id}  model {s.model or '-'}  created {_when(s.created_at)}  "
          f"updated {_when(s.updated_at)}")
    print("  settings " + ", ".join(f"{k}={v}" for k, v in s.settings.items()))
    if s.parent_id:
        print(f"  forked from {s.parent_id} at message {s.forked_at}")
    if s.system_prompt:
        print(f"\n[system] {s.system_prompt}")
    offset, page = 0, 200
    while True:
        batch = store.messages(s.id, offset=offset, limit=page)
        alts = store.alternatives(s.id, first_idx=offset) if batch else {}
        for m in batch:
            pair = alts.get(m.id) or []
            kept = f"  kept: {pair[0].chosen_engine}" if pair and pair[0].chosen_engine else ""
            _print_reply(f"[{m.idx}] {m.role}", m.status, m.stats, m.content, kept)
            for a in pair:
                _print_reply(f"[{m.idx}] alternative", a.status, a.stats, a.content,
                             f"  {a.engine}; {pair_line(a)}")
        if len(batch) < page:
            break
        offset += page
    return 0


def _print_reply(head: str, status: str, st: dict, content: str, note: str = "") -> None:
    flag = "" if status == "complete" else f" ({status})"
    stats = ""
    if st.get("decode_tok_s") is not None:
        stats = f"  [{st.get('completion_tokens', '?')} tokens, {st['decode_tok_s']:.1f} tok/s]"
    print(f"\n{head}{flag}{stats}{note}\n{content}")
    if st.get("error"):
        print(f"(error: {st['error']})")


def _write_atomic(path: Path, text: str) -> None:
    """Write a chat to `path`, 0600 like the database: through a new temp file of a random name (mkstemp:
    O_EXCL, 0600), never through a link planted at a guessable name."""
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise SessionError(f"cannot write {path}: {e.strerror or e}") from e


def _export(store: SessionStore, args) -> int:
    text = store.export(store.resolve_id(args.id), fmt=args.format)
    if args.out:
        out = Path(args.out).expanduser()
        if not out.parent.is_dir():
            raise SessionError(f"cannot write {out}: folder {out.parent} does not exist")
        _write_atomic(out, text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _import(store: SessionStore, args) -> int:
    if args.file == "-":
        text = sys.stdin.read()
    else:
        path = Path(args.file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise SessionError(f"no file {path}: give a file written by `qwen-chat sessions export ID "
                               "--format json`") from e
        except (OSError, UnicodeDecodeError) as e:
            raise SessionError(f"cannot read {path}: {e}") from e
    s = store.import_json(text)
    print(f"imported session {s.id} ({s.title!r}, {store.count_messages(s.id)} messages)")
    return 0


def _delete(store: SessionStore, args) -> int:
    sid = store.resolve_id(args.id)
    s = store.get_session(sid)
    if not args.yes:
        if not sys.stdin.isatty():
            raise SessionError(f"not deleting {sid} without confirmation: pass --yes")
        answer = input(f"delete session {sid} ({s.title!r}, {store.count_messages(sid)} messages)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    store.delete_session(sid)
    print(f"deleted {sid}")
    return 0


def _fork(store: SessionStore, args) -> int:
    new = store.fork(store.resolve_id(args.id), at=args.at)
    print(f"forked {new.parent_id} at message {args.at} -> {new.id} "
          f"({store.count_messages(new.id)} messages)")
    return 0


COMMANDS = {"list": _list, "show": _show, "export": _export, "import": _import, "delete": _delete,
            "fork": _fork}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed usage / help
        return e.code if isinstance(e.code, int) else 2
    try:
        with SessionStore(getattr(args, "db", None)) as store:
            return COMMANDS[args.command](store, args)
    except SessionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `qwen-chat sessions show ID | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
