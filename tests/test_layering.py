"""Imports point one way: layers/ are used by the engine and never import it."""

import ast
import re
from pathlib import Path

LAYERS = Path(__file__).resolve().parents[1] / "inference" / "layers"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_do_not_import_the_engine():
    bad = {p.name: sorted(m for m in _imports(p) if m.startswith("inference.engine"))
           for p in sorted(LAYERS.glob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}


def test_no_module_uses_the_protocols_private_helpers():
    """The OpenAI schema shares the protocol's value checks through public names (inference.protocol.json_values)."""
    root = LAYERS.parent
    users = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
             if re.search(r"\b(P|protocol)\._[a-z]", p.read_text())]
    assert not users
