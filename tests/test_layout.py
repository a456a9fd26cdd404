"""The module graph of nas/ (shared/DESIGN.md): imports point one way, with no cycle even through imports inside
functions, and no library module imports the CLI; only nas/__main__.py (python -m nas TOOL) has an entry block."""

from __future__ import annotations

import ast
from pathlib import Path

NAS = Path(__file__).resolve().parents[1] / "nas"


def imports(path: Path) -> set[str]:
    """nas modules that ``path`` imports anywhere, entry blocks and function bodies included."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nas."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nas.")}
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in NAS.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(g.get(m, ())):
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_only_entry_points_import_the_cli() -> None:
    assert {m for m, deps in graph().items() if "cli" in deps} == {"__main__"}


def test_only_the_door_has_an_entry_block() -> None:
    """python -m nas TOOL is the one way in: a `python -m nas.X` block would run the module's body twice."""
    blocks = {p.stem for p in NAS.glob("*.py")
              for node in ast.parse(p.read_text()).body
              if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)}
    assert blocks == {"__main__"}
