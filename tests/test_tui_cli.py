"""`qwen-chat` (tui/cli.py): option errors are one line and exit 2, dispatch to `sessions` and to the
engine commands, and the app side never imports torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from inference.entrypoints.cli import COMMANDS
from sessions import SessionStore
from tui.cli import main


@pytest.mark.parametrize("argv, expected", [
    (["--session", "nope"], "no session 'nope'"),
    (["--model", "/no/such/model/dir"], "no such directory"),
    (["--tp", "0"], "--tp must be a positive integer"),
    (["--socket", "/no/such.sock"], "nothing there"),
    (["--new", "--session", "abc"], "not allowed with argument"),
    (["--dtype", "float8"], "invalid choice"),
])
def test_bad_options_print_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    assert main([*argv, "--db", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err, err


def test_a_socket_in_a_shared_folder_is_refused_before_nothing_there(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: serving there is refused, so "start one there" would be wrong advice
    assert main(["--socket", str(shared / "e.sock"), "--db", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the folder ") and "writable by every user" in err and "nothing there" not in err


def test_sessions_subcommand_runs_the_sessions_cli(tmp_path, capsys):
    db = tmp_path / "s.db"
    with SessionStore(db) as store:
        store.create_session(title="listed here")
    assert main(["sessions", "list", "--db", str(db)]) == 0
    assert "listed here" in capsys.readouterr().out


def test_engine_commands_replace_the_process_with_python_m_inference(tmp_path):
    sock = tmp_path / "none.sock"
    code = f"import sys; from tui.cli import main; sys.exit(main(['stop', '--socket', {str(sock)!r}]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"no engine server is running on {sock}" in out.stdout


def test_the_app_side_never_imports_torch():
    code = ("import sys, tui.cli, tui.app, tui.screens.chat, tui.reply; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_installed_entry_point_shows_help():
    exe = shutil.which("qwen-chat")
    if exe is None:
        pytest.skip("qwen-chat is not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--model" in out.stdout and "--session" in out.stdout
    assert "Engine commands: " + ", ".join(COMMANDS) + ";" in " ".join(out.stdout.split())
