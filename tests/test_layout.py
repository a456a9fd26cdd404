"""The module graph of nas/ (shared/DESIGN.md): imports point one way, with no cycle even through imports inside
functions, and no library module imports the CLI; only nas/__main__.py (python -m nas TOOL) has an entry block that
runs a tool; the report and the study plan only read (no process, no benchmark lookup), and a run reaches its
parent-death signal without importing the study."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
    """python -m nas TOOL is the one way in: a `python -m nas.X` block that ran a tool would run the module's body
    twice. A module behind a tool has one block, which only says which command to run."""
    blocks = {p.stem: ast.unparse(node.body[-1]) for p in NAS.glob("*.py")
              for node in ast.parse(p.read_text()).body
              if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)}
    assert blocks.pop("__main__") == "sys.exit(main())"
    assert "bench201" in blocks and all(b.startswith("raise SystemExit(library_module(") for b in blocks.values())


def reach(module: str) -> set[str]:
    """Every nas module that ``module`` imports, directly or through others, function bodies included."""
    g, seen, todo = graph(), set(), [module]
    while todo:
        for n in g.get(todo.pop(), set()) - seen:
            seen.add(n)
            todo.append(n)
    return seen


def imported_names(path: Path) -> tuple[set[str], set[str]]:
    """The top-level packages ``path`` imports anywhere, and the names it takes from nas.bench201."""
    packages, bench = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            packages |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            packages.add(node.module.split(".")[0])
            if node.module == "nas.bench201":
                bench |= {a.name for a in node.names}
    return packages, bench


# what opens or queries a benchmark (the rest of nas/bench201.py reads records already looked up)
LOOKUPS = {"load_benchmark", "lookup", "epoch_lookup", "Nb201Table", "NatsBenchmark"}


@pytest.mark.parametrize("module", ["report", "study"])
def test_the_report_and_the_plan_only_read(module: str) -> None:
    """nas/report.py builds the report from what the runs recorded, and nas/study.py is the study as data: neither
    starts a process, looks a cell up in a benchmark or writes failures.json, nor reaches the modules that do
    (nas/jobs.py, nas/studies.py), even through the modules it imports."""
    defined = {n.name for n in ast.parse((NAS / "bench201.py").read_text()).body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert LOOKUPS <= defined  # the list above still names nas/bench201.py's lookups
    packages, bench = imported_names(NAS / f"{module}.py")
    assert not packages & {"subprocess", "multiprocessing", "selectors", "signal"}
    assert not bench & LOOKUPS, f"nas/{module}.py imports benchmark lookups: {sorted(bench & LOOKUPS)}"
    assert not reach(module) & {"jobs", "studies", "cli"}, sorted(reach(module))
    if module == "report":
        source = (NAS / "report.py").read_text()
        assert "failures.json" not in source and "FAILURES" not in source and "open_benchmark" not in source


def test_a_run_follows_its_study_without_importing_the_study() -> None:
    """Every run a study starts calls nas.jobs.follow_parent (prctl): nas/jobs.py must not pull in the study."""
    assert not reach("jobs") & {"studies", "report", "cli"}, sorted(reach("jobs"))
    cli = ast.parse((NAS / "cli.py").read_text())
    guarded = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == "run_guarded")
    assert "studies" not in {i.module.split(".")[1] for i in ast.walk(guarded)
                             if isinstance(i, ast.ImportFrom) and i.module and i.module.startswith("nas.")}


def test_the_door_and_the_layout_page_name_every_tool() -> None:
    from nas.cli import TOOLS

    door = " ".join((NAS / "__main__.py").read_text().split())
    page = " ".join((NAS.parent / "docs" / "layout.md").read_text().split())
    listed = "search, evaluate, compare, genotype, plot, bench201, config, latency, export, predict"
    assert listed.split(", ") == list(TOOLS) and listed in door and listed in page


def test_run_file_names_are_written_only_in_their_one_module() -> None:
    """nas/files.py names every file of a run and a study; the other modules use its names, never the literals."""
    from nas import files

    names = {v for k, v in vars(files).items() if k.isupper() and isinstance(v, str) and "." in v[1:]}
    assert {"config.yaml", "genotype.json", "results.json", "checkpoint.pt", "report.md"} <= names
    found = [(p.name, node.value) for p in NAS.glob("*.py") if p.name != "files.py"
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert found == []
    assert "study" not in graph()["runlog"] and "study" not in graph()["checkpoint"]  # a run needs no study plan
