"""Imports point one way (docs/architecture.md): the app side never loads torch, the engine never knows who
drives it, layers never import the engine."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFERENCE = ROOT / "inference"
LAYERS = INFERENCE / "layers"
CORE = ("engine", "layers", "models", "kernels", "quant")  # the engine and what it runs
USERS = ("client", "protocol", "server", "entrypoints", "eval", "compare")  # what drives or talks to it
# the offline quantizer (the `quantize` command inside quant/) shows eval's progress bar
KNOWN = {"inference/quant/quantize.py": ["inference.eval.progress", "inference.eval.progress.ProgressBar"]}
HEAVY = ("torch", "numpy", "safetensors", "triton", "transformers")
# the torch-free modules of inference/ that tui/ may use; the shared foundations at the top of inference/
TUI_MAY_IMPORT = ("inference.client", "inference.protocol", "inference.entrypoints.cli", "inference.errors",
                  "inference.model_path", "inference.private_files", "inference.config", "inference.envs",
                  "inference.compare.metrics")  # the compare view's first difference and agreement (pure)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _offenders(files, bad) -> dict:
    found = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if bad(m)) for p in files}
    return {k: v for k, v in found.items() if v}


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_layers_do_not_import_the_engine():
    assert not _offenders(sorted(LAYERS.glob("*.py")), lambda m: _under(m, ["inference.engine"]))


def test_the_engine_does_not_import_what_drives_it():
    """engine/, layers/, models/, kernels/, quant/ never import the server, the clients, the protocol or the
    commands: they take an EngineConfig and return outputs."""
    files = sorted(p for pkg in CORE for p in (INFERENCE / pkg).rglob("*.py"))
    found = _offenders(files, lambda m: _under(m, [f"inference.{u}" for u in USERS]))
    assert not {k: v for k, v in found.items() if v != KNOWN.get(k)}


def test_the_client_side_imports_no_engine_code():
    """client/ and protocol/ use only each other and the torch-free foundations at the top of inference/."""
    files = sorted(p for pkg in ("client", "protocol") for p in (INFERENCE / pkg).rglob("*.py"))
    others = [f"inference.{pkg}" for pkg in (*CORE, "server", "entrypoints", "eval", "compare")]
    assert not _offenders(files, lambda m: _under(m, [*HEAVY, "inference.distributed", "inference.tokenizer",
                                                      *others]))


def test_tui_uses_sessions_and_the_client_side_only():
    tui = _offenders(sorted((ROOT / "tui").rglob("*.py")),
                     lambda m: _under(m, ["inference", *HEAVY]) and m != "inference" and not _under(m, TUI_MAY_IMPORT))
    sessions = _offenders(sorted((ROOT / "sessions").rglob("*.py")), lambda m: _under(m, ["inference", "tui", *HEAVY]))
    assert not tui and not sessions


def test_the_app_side_loads_without_torch():
    """Importing the app, the sessions store, every client and protocol module and the command table loads
    neither torch nor numpy nor safetensors (the AST checks above miss what a foundation module imports)."""
    modules = ["tui.app", "tui.cli", "sessions", "inference.entrypoints.cli", "inference.tokenizer",
               "inference.compare.metrics",
               *(f"inference.{p.parent.name}.{p.stem}".removesuffix(".__init__")
                 for pkg in ("client", "protocol") for p in sorted((INFERENCE / pkg).glob("*.py")))]
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "bad = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_no_module_uses_the_protocols_private_helpers():
    """The OpenAI schema shares the protocol's value checks through public names (inference.protocol.json_values)."""
    users = [str(p.relative_to(INFERENCE)) for p in sorted(INFERENCE.rglob("*.py"))
             if re.search(r"\b(P|protocol)\._[a-z]", p.read_text())]
    assert not users
