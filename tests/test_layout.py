"""The module graph of nas/ (shared/DESIGN.md, docs/layout.md): the packages are layered, and every import made when
the code runs (at the top of a module or inside a function) points down the layers or within one package, with no
cycle between modules; only ``if TYPE_CHECKING:`` imports, which never run, may name a module above (the recipe schemas
that nas.config defines and the loops below it take as arguments). No library module imports the CLI; only
nas/__main__.py (python -m nas TOOL) has an entry block that runs a tool; the report and the study plan only read (no
process, no benchmark lookup), and a run reaches its parent-death signal without importing the study."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NAS = Path(__file__).resolve().parents[1] / "nas"

# From the bottom up; a module may import its own layer's modules and those of the layers below.
LAYERS = [
    {"errors", "text", "loader"},   # the errors a user sees, plural words, the generic YAML loader
    {"run"},                        # what a run is: files, directory, log, checkpoints, processes, the loop frame
    {"space"},                      # ops, topologies, genotypes, networks, drawings
    {"data"},                       # image readers and the in-memory pipeline
    {"bench201"},                   # NAS-Bench-201's ground truth
    {"searching"},                  # mixers, supernet, scores, selection, budgets, the bilevel loop
    {"config"},                     # the recipe schemas: they check names against the registries below
    {"model", "train"},             # a trained network as a file; training a genotype from scratch
    {"study"},                      # comparison studies
    {"api", "cli", "__main__"},     # the doors
]


def module_name(path: Path) -> str:
    """``path``'s module under nas, dotted: "searching.bilevel", "cli"; a package's __init__ is the package."""
    parts = path.relative_to(NAS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(NAS.rglob("*.py"))}


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    blocks = [b for b in ast.walk(tree) if isinstance(b, ast.If) and ast.unparse(b.test) == "TYPE_CHECKING"]
    return {id(n) for b in blocks for stmt in b.body for n in ast.walk(stmt)}


def imports(path: Path, typing: bool = False) -> set[str]:
    """nas modules that ``path`` imports when it runs (entry blocks and function bodies included; with ``typing``,
    the ``if TYPE_CHECKING:`` imports too); ``from nas.pkg import mod`` counts as importing nas.pkg.mod."""
    tree = ast.parse(path.read_text())
    skip = set() if typing else type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nas."):
            base = node.module[4:]
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name[4:] for a in node.names if a.name.startswith("nas.")}
    return found - {module_name(path)}


def graph(typing: bool = False) -> dict[str, set[str]]:
    return {m: imports(p, typing) for m, p in MODULES.items() if m}


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer_and_the_packages_are_the_designs() -> None:
    assert {m.split(".")[0] for m in MODULES if m} == set().union(*LAYERS)
    packages = {p.parent.name for p in NAS.rglob("__init__.py") if p.parent != NAS}
    assert packages == {"space", "searching", "run", "data", "study"}


def test_imports_point_down_the_layers() -> None:
    upward = sorted(f"{m} -> {n}" for m, deps in graph().items() for n in deps if layer(n) > layer(m))
    assert upward == []


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


def test_type_only_imports_name_only_the_recipe_schemas() -> None:
    """An import above a module's layer is a type it is handed, never code it runs."""
    typed = {(m, n) for m, deps in graph(typing=True).items() for n in deps - graph()[m] if layer(n) > layer(m)}
    assert {n for _, n in typed} <= {"config"}, sorted(typed)


def test_no_subpackage_hides_the_python_api() -> None:
    """nas.search, nas.evaluate, nas.compare and nas.load_model stay the API's functions once every module is
    imported (a subpackage named like one would replace it as an attribute of nas)."""
    import importlib

    import nas

    for m in MODULES:
        if m and m != "__main__":
            importlib.import_module(f"nas.{m}")
    from nas import api

    for name in ("search", "evaluate", "compare", "load_model"):
        assert getattr(nas, name) is getattr(api, name)


def test_only_entry_points_import_the_cli() -> None:
    assert {m for m, deps in graph().items() if "cli" in deps} == {"__main__"}


def test_only_the_door_has_an_entry_block() -> None:
    """python -m nas TOOL is the one way in: a `python -m nas.X` block that ran a tool would run the module's body
    twice. A module behind a tool has one block, which only says which command to run."""
    blocks = {m: ast.unparse(node.body[-1]) for m, p in MODULES.items()
              for node in ast.parse(p.read_text()).body
              if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)}
    assert blocks.pop("__main__") == "sys.exit(main())"
    assert "bench201" in blocks and all(b.startswith("raise SystemExit(library_module(") for b in blocks.values())
    for m, b in blocks.items():  # and names its own module
        assert f"library_module('nas.{m}'" in b, b


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


@pytest.mark.parametrize("module", ["study.report", "study.plan"])
def test_the_report_and_the_plan_only_read(module: str) -> None:
    """nas/study/report.py builds the report from what the runs recorded, and nas/study/plan.py is the study as
    data: neither starts a process, looks a cell up in a benchmark or writes failures.json, nor reaches the modules
    that do (nas/study/jobs.py, nas/study/run.py), even through the modules it imports."""
    defined = {n.name for n in ast.parse(MODULES["bench201"].read_text()).body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert LOOKUPS <= defined  # the list above still names nas/bench201.py's lookups
    packages, bench = imported_names(MODULES[module])
    assert not packages & {"subprocess", "multiprocessing", "selectors", "signal"}
    assert not bench & LOOKUPS, f"nas.{module} imports benchmark lookups: {sorted(bench & LOOKUPS)}"
    assert not reach(module) & {"study.jobs", "study.run", "cli"}, sorted(reach(module))
    if module == "study.report":
        source = MODULES[module].read_text()
        assert "failures.json" not in source and "FAILURES" not in source and "open_benchmark" not in source


def test_a_run_follows_its_study_without_importing_the_study() -> None:
    """Every run a study starts calls nas.study.jobs.follow_parent (prctl): nas/study/jobs.py must not pull in the
    study."""
    assert not reach("study.jobs") & {"study.run", "study.report", "cli"}, sorted(reach("study.jobs"))
    cli = ast.parse(MODULES["cli"].read_text())
    guarded = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == "run_guarded")
    assert "nas.study.run" not in {i.module for i in ast.walk(guarded) if isinstance(i, ast.ImportFrom)}


def test_the_door_and_the_layout_page_name_every_tool() -> None:
    from nas.cli import TOOLS

    door = " ".join(MODULES["__main__"].read_text().split())
    page = " ".join((NAS.parent / "docs" / "layout.md").read_text().split())
    listed = "search, evaluate, compare, genotype, plot, bench201, config, latency, export, predict"
    assert listed.split(", ") == list(TOOLS) and listed in door and listed in page


def test_the_layout_page_names_every_module() -> None:
    """docs/layout.md's map has a line for every module: nas/x.py at the top, and under a line nas/pkg/ each of the
    package's files indented."""
    listed, package = set(), None
    for line in (NAS.parent / "docs" / "layout.md").read_text().splitlines():
        first = line.split()[0] if line.strip() else ""
        if first.startswith("nas/") and first.endswith("/"):
            package = first
        elif first.startswith("nas/"):
            listed.add(first)
        elif package and line.startswith("  ") and first.endswith(".py"):
            listed.add(package + first)
    assert sorted(str(p.relative_to(NAS.parent)) for p in MODULES.values()) == sorted(listed)


def test_the_tool_of_each_run_kind_is_written_only_in_the_run_files_module() -> None:
    """nas/run/files.py's TOOL maps each kind of run to the tool that starts and resumes it; no other module writes
    that mapping again, as a table from a kind to its tool or as a choice between tools."""
    from nas.run.files import TOOL

    tools = set(TOOL.values())
    renamed = {(kind, tool) for kind, tool in TOOL.items() if kind != tool}  # ("train", "evaluate"), ...
    found = []
    for m, p in MODULES.items():
        if m == "run.files":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    inside = {c.value for c in ast.walk(v) if isinstance(c, ast.Constant)}
                    if isinstance(k, ast.Constant) and any((k.value, t) in renamed for t in inside):
                        found.append((m, k.value))
            elif isinstance(node, ast.IfExp):  # "search" if kind == "search" else "evaluate"
                branches = [c.value for c in (node.body, node.orelse) if isinstance(c, ast.Constant)]
                if len(branches) == 2 and set(branches) <= tools:
                    found.append((m, ast.unparse(node)))
    assert found == []


def test_run_file_names_are_written_only_in_their_one_module() -> None:
    """nas/run/files.py names every file of a run and a study; the other modules use its names, never the literals."""
    from nas.run import files

    names = {v for k, v in vars(files).items() if k.isupper() and isinstance(v, str) and "." in v[1:]}
    assert {"config.yaml", "genotype.json", "results.json", "checkpoint.pt", "report.md"} <= names
    found = [(m, node.value) for m, p in MODULES.items() if m != "run.files"
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert found == []
    assert not reach("run.runlog") & {"study.plan"} and not reach("run.checkpoint") & {"study.plan"}


# What else is named like a space, and where code may name it: a name of one of these in a context that says which
SHARED_NAMES = ("mixer", "method", "macro", "rule", "derive")


def shared_names() -> dict[str, set[str]]:
    """The names of the things that may share a space's name: mixers (and a study's methods, which default to
    mixers), search networks (model.macro) and alpha derivation rules (search.derive)."""
    from nas.searching.mixing import mixer_names
    from nas.space.derivation import ALPHA_RULES
    from nas.space.spaces import get_space, list_spaces

    macros = {m for name in list_spaces() for m in get_space(name).macros}
    return {"mixer": set(mixer_names()), "method": set(mixer_names()), "macro": macros, "rule": set(ALPHA_RULES),
            "derive": set(ALPHA_RULES)}


def literal_context(node: ast.AST, parents: dict[int, ast.AST]) -> tuple[str, bool]:
    """What the code around a literal says it is: the other side of its comparison, the keyword or parameter it is
    passed as or is the default of, the function it is passed to, the name it is assigned to, or, for a config key's
    ``_key(...)``, the key; and whether it is that key's default value."""
    child, p = node, parents[id(node)]
    while isinstance(p, (ast.Tuple, ast.List, ast.Set)):  # a literal among others: the container's context
        child, p = p, parents[id(p)]
    if isinstance(p, ast.Compare):
        return " ".join(ast.unparse(x) for x in (p.left, *p.comparators) if x is not child), False
    if isinstance(p, ast.keyword):
        call = parents[id(p)]
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "_key":  # a config key's choices: the key's
            return literal_context(call, parents)[0], False
        return str(p.arg), False
    if isinstance(p, ast.arguments):
        args = [*p.posonlyargs, *p.args]
        names = {id(d): a.arg for a, d in zip(args[len(args) - len(p.defaults):], p.defaults, strict=True)}
        names |= {id(d): a.arg for a, d in zip(p.kwonlyargs, p.kw_defaults, strict=True) if d is not None}
        return names.get(id(child), ""), False
    if isinstance(p, ast.Call) and ast.unparse(p.func) == "_key":  # a config key: its name, and its default
        key = parents[id(p)]
        target = ast.unparse(key.target) if isinstance(key, ast.AnnAssign) else ""
        return target, bool(p.args) and p.args[0] is child
    if isinstance(p, ast.Call):
        return ast.unparse(p.func), False
    if isinstance(p, (ast.Assign, ast.AnnAssign)):
        targets = p.targets if isinstance(p, ast.Assign) else [p.target]
        return " ".join(ast.unparse(t) for t in targets), False
    return ast.unparse(p), False


def test_no_module_outside_the_space_package_names_a_space() -> None:
    """A space is asked, never named (shared/DESIGN.md): outside nas/space/, no module compares a space's name, keys a
    table by it or passes it, so a new space is one module under nas/space/ and its registration. A string equal to a
    registered space's name ("darts", "nb201") may appear outside nas/space/ only
    - in nas/config.py as a key's default value (model.space's default: recipes are data), or
    - where it names something else that shares the name, and the code around it says so: the mixer registry
      (nas/searching/mixing.py), or a literal whose comparison, keyword, parameter, function or assignment names a
      mixer, a study's method, a search network (macro) or a derivation rule (rule, derive), which must then be one
      of those (a registered mixer, a space's search network, an alpha rule).
    Help strings and messages are text, not literals that equal a name."""
    from nas.space.spaces import list_spaces

    spaces, shared = set(list_spaces()), shared_names()
    found = []
    for m, path in MODULES.items():
        if m.split(".")[0] == "space" or m == "searching.mixing":
            continue
        tree = ast.parse(path.read_text())
        parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and node.value in spaces) or isinstance(parents[id(node)],
                                                                                       ast.JoinedStr):
                continue
            context, default = literal_context(node, parents)
            if m == "config" and default:
                continue  # a key's default value: recipes are data
            said = [role for role in SHARED_NAMES if role in context.lower()]
            if "space" in context.lower() or not said:
                found.append(f"{m}: {node.value!r} as {context or '?'}")
            elif node.value not in shared[said[0]]:
                found.append(f"{m}: {node.value!r} is no {said[0]}")
    assert found == [], found


def derive_comparisons(tree: ast.AST) -> list[str]:
    """The comparisons in ``tree`` of ``derive`` (a name or an attribute: s.derive, cfg.search.derive) with a string
    or a tuple, list or set of strings."""
    def is_derive(n: ast.AST) -> bool:
        return (isinstance(n, ast.Attribute) and n.attr == "derive") or (isinstance(n, ast.Name) and n.id == "derive")

    def is_names(n: ast.AST) -> bool:
        if isinstance(n, (ast.Tuple, ast.List, ast.Set)):
            return bool(n.elts) and all(is_names(e) for e in n.elts)
        return isinstance(n, ast.Constant) and isinstance(n.value, str)

    return [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(map(is_derive, (node.left, *node.comparators)))
            and any(map(is_names, (node.left, *node.comparators)))]


def test_no_module_outside_the_rule_registry_compares_search_derive_with_a_name() -> None:
    """How a cell is chosen is a registry (shared/DESIGN.md): outside nas/searching/rules.py, no module compares
    search.derive with a rule's name or names; it asks the rule (get_rule(s.derive): its options, ranks, needs_alpha,
    scores), so that a new rule is one registration."""
    assert derive_comparisons(ast.parse('if s.derive in ("sample", "score") or "darts" != derive or '
                                        'cfg.search.derive == "x": pass')) == [
        "line 1: s.derive in ('sample', 'score')", "line 1: 'darts' != derive", "line 1: cfg.search.derive == 'x'"]
    assert derive_comparisons(ast.parse("if s.derive in ALPHA_RULES or s.mixer == 'random': pass")) == []
    found = [f"{m}: {c}" for m, path in MODULES.items() if m != "searching.rules"
             for c in derive_comparisons(ast.parse(path.read_text()))]
    assert found == [], found
