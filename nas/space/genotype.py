"""Genotypes: the discrete architecture a search ends with, its derivation from alpha, and its formats.

Derivation (DARTS space): per intermediate node keep the 2 strongest distinct input edges, ranked by their
best non-`none` softmax weight, each with that best op (Liu et al., ICLR 2019, Sec. 2.4); or GDAS's rule,
the top-2 (op, input) pairs of the node (Dong & Yang, CVPR 2019, Sec. 3.3). NAS-Bench-201: the argmax op
of every edge, `none` included (Dong & Yang, ICLR 2020).

Formats, each written and parsed without eval, round-tripping exactly:
  JSON (canonical)  {"space": "darts", "normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...], ...}
  DARTS text        Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=..., ...)
  NB201 string      |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|

A DARTS-space genotype may leave its reduction cell to GDAS-FRC's fixed, hand-designed one (Dong & Yang, CVPR
2019, Sec. 4.1; nas.space.ops.FixedReductionCell): JSON "reduce": "gdas_frc" without reduce_concat; DARTS text
reduce=None, as the official GDAS_F1 writes it.
"""

from __future__ import annotations

import ast
import difflib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.errors import UserError
from nas.run.files import GENOTYPE
from nas.space.ops import check_op_name, is_parameter_free
from nas.space.spaces import SearchSpace, space_ops

Edge = tuple[str, int]          # (op name, global id of the input node)
Node = tuple[Edge, ...]         # the edges kept into one intermediate node
FIXED_REDUCE = "gdas_frc"       # the JSON value of "reduce" for the fixed reduction cell


class GenotypeError(UserError):
    """A genotype (file, string or structure) that is not valid."""


@dataclass(frozen=True)
class Genotype:
    """A discrete cell architecture per cell type. NAS-Bench-201 genotypes have only ``normal``."""

    space: str
    normal: tuple[Node, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Node, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    reduce_fixed: bool = False  # GDAS-FRC: the reduction cell is the fixed one, not a searched cell

    def cells(self) -> dict[str, tuple[tuple[Node, ...], tuple[int, ...]]]:
        """The searched cells: normal, and reduce in the DARTS space unless it is the fixed one."""
        out = {"normal": (self.normal, self.normal_concat)}
        if self.space == "darts" and not self.reduce_fixed:
            out["reduce"] = (self.reduce, self.reduce_concat)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"space": self.space}
        for name, (nodes, concat) in self.cells().items():
            d[name] = [[[op, src] for op, src in node] for node in nodes]
            d[f"{name}_concat"] = list(concat)
        if self.reduce_fixed:
            d["reduce"] = FIXED_REDUCE
        return d

    def to_json(self) -> str:
        """Canonical JSON: one node per line."""
        lines = [f'  "space": {json.dumps(self.space)}']
        for name, (nodes, concat) in self.cells().items():
            rows = ",\n".join(f"    {json.dumps([[op, src] for op, src in node])}" for node in nodes)
            lines.append(f'  "{name}": [\n{rows}\n  ]')
            lines.append(f'  "{name}_concat": {json.dumps(list(concat))}')
        if self.reduce_fixed:
            lines.append(f'  "reduce": {json.dumps(FIXED_REDUCE)}')
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def to_text(self) -> str:
        """DARTS ``Genotype(...)`` text for the DARTS space, the NB201 string for NAS-Bench-201."""
        return to_darts_text(self) if self.space == "darts" else to_nb201_string(self)

    def __str__(self) -> str:
        return self.to_text()


# ---------------------------------------------------------------------------------------------- validation

def check_genotype(g: Genotype) -> Genotype:
    """Raise GenotypeError unless g is a well-formed genotype of its space; return g."""
    if g.reduce_fixed and (g.space != "darts" or g.reduce or g.reduce_concat):
        raise GenotypeError("only a darts-space genotype may have the fixed reduction cell, and then no reduce nodes")
    if g.space == "nb201":
        if g.reduce or g.reduce_concat:
            raise GenotypeError("an nb201 genotype has only a normal cell, not a reduce cell")
        if len(g.normal) != 3:
            raise GenotypeError(f"an nb201 cell has 3 nodes, got {len(g.normal)}")
        for i, node in enumerate(g.normal, start=1):
            srcs = [src for _, src in node]
            if srcs != list(range(i)):
                raise GenotypeError(f"nb201 node {i} must have one edge from each of nodes 0..{i - 1} in order, "
                                    f"got inputs {srcs}")
            for op, _ in node:
                _check_op(op, space_ops("nb201"), " in an nb201 cell")
        if tuple(g.normal_concat) != (3,):
            raise GenotypeError(f"an nb201 cell outputs node 3, got concat {list(g.normal_concat)}")
        return g
    if g.space != "darts":
        raise GenotypeError(f"unknown genotype space {g.space!r}; valid: darts, nb201")
    valid_ops = [op for op in space_ops("darts") if op != "none"]
    for name, (nodes, concat) in g.cells().items():
        if not nodes:
            raise GenotypeError(f"the {name} cell has no nodes")
        for i, node in enumerate(nodes):
            if not node:
                raise GenotypeError(f"{name} node {i + 2} has no input edges")
            for op, src in node:
                _check_op(op, valid_ops, f" in the {name} cell")
                if not 0 <= src < i + 2:
                    raise GenotypeError(f"{name} node {i + 2} takes input {src}, but only nodes 0..{i + 1} "
                                        "come before it")
        n = len(nodes) + 2
        if not concat or any(not 0 <= c < n for c in concat):
            raise GenotypeError(f"{name}_concat {list(concat)} must name nodes among 0..{n - 1}")
    return g


def _check_op(op: str, valid: list[str], where: str) -> None:
    try:
        check_op_name(op, valid, where)
    except UserError as e:
        raise GenotypeError(str(e)) from None


# ---------------------------------------------------------------------------------------------- derivation

def derive(space: SearchSpace, alphas: dict[str, torch.Tensor], rule: str = "darts",
           max_skip: int | None = None) -> Genotype:
    """The genotype that alpha (logits, one (E, K) matrix per cell type) stands for; with ``max_skip``, its normal
    cell keeps at most that many skip_connect edges (P-DARTS, Chen et al. 2019, Sec. 3.3)."""
    if rule not in ("darts", "gdas"):
        raise UserError(f"unknown derivation rule {rule!r}; valid: darts, gdas")
    cells = {t: _derive_cell(space, alphas[t].softmax(dim=-1), rule) for t in space.cell_types}
    if max_skip is not None and "skip_connect" in space.ops:
        cells["normal"] = _cap_skips(space, alphas["normal"].softmax(dim=-1), rule, cells["normal"], max_skip)
    return genotype_from_cells(space, cells)


def alpha_rule(derive: str) -> str:
    """The alpha rule of each epoch's genotype and of pools drawn from alpha: search.derive's own when it reads
    alpha (darts, gdas), else darts (the other rules cost too much to run every epoch)."""
    return derive if derive in ("darts", "gdas") else "darts"


def genotype_from_cells(space: SearchSpace, cells: dict[str, tuple[Node, ...]]) -> Genotype:
    """The genotype of a space's searched cells (one per cell type); a DARTS space that searches no reduction cell
    (GDAS-FRC) gets the fixed one."""
    if space.name == "nb201":
        return Genotype("nb201", cells["normal"], space.concat)
    if "reduce" not in cells:
        return Genotype("darts", cells["normal"], space.concat, reduce_fixed=True)
    return Genotype("darts", cells["normal"], space.concat, cells["reduce"], space.concat)


def _cap_skips(space: SearchSpace, w: torch.Tensor, rule: str, nodes: tuple[Node, ...],
               max_skip: int) -> tuple[Node, ...]:
    """While the cell keeps more than ``max_skip`` skip_connects, take skip_connect off the kept skip edge whose
    weight is smallest and derive again: that edge falls back to its next best op, or loses its place."""
    skip, w = space.ops.index("skip_connect"), w.clone()
    while True:
        kept = [space.edges.index((src, node)) for node, edges in zip(space.nodes, nodes, strict=True)
                for op, src in edges if op == "skip_connect"]
        if len(kept) <= max_skip:
            return nodes
        w[min(kept, key=lambda e: float(w[e, skip])), skip] = 0.0
        nodes = _derive_cell(space, w, rule)


def _derive_cell(space: SearchSpace, w: torch.Tensor, rule: str) -> tuple[Node, ...]:
    ops = space.ops
    rows = w.tolist()  # (E, K) softmax weights
    nodes: list[Node] = []
    for node in space.nodes:
        edge_ids = space.edges_into(node)
        if space.name == "nb201":  # keep every edge, argmax op (none included)
            nodes.append(tuple((ops[max(range(len(ops)), key=lambda k: rows[e][k])], space.edges[e][0])
                               for e in edge_ids))
            continue
        real = [k for k, op in enumerate(ops) if op != "none"]
        if rule == "darts":
            best = {e: max(real, key=lambda k: rows[e][k]) for e in edge_ids}
            strongest = sorted(edge_ids, key=lambda e: -rows[e][best[e]])[:2]  # stable: ties keep order
            nodes.append(tuple((ops[best[e]], space.edges[e][0]) for e in strongest))
        else:
            pairs = [(e, k) for e in edge_ids for k in real]
            top = sorted(pairs, key=lambda ek: -rows[ek[0]][ek[1]])[:2]
            nodes.append(tuple((ops[k], space.edges[e][0]) for e, k in top))
    return tuple(nodes)


def genotype_of(space: Any, masks: dict[str, torch.Tensor]) -> Genotype:
    """The genotype that decided masks (one allowed op per kept edge, `none` on dropped DARTS-space edges) stand for."""
    cells: dict[str, tuple[Node, ...]] = {}
    for t in space.cell_types:
        nodes: list[Node] = []
        for node in space.nodes:
            edges = [(space.ops[int(masks[t][e].nonzero()[0])], space.edges[e][0]) for e in space.edges_into(node)]
            nodes.append(tuple(edges) if space.name == "nb201" else tuple(x for x in edges if x[0] != "none"))
        cells[t] = tuple(nodes)
    return genotype_from_cells(space, cells)


def masks_of(space: Any, genotype: Genotype, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The op masks that run exactly ``genotype`` in the supernet: one allowed op per kept edge, and in the DARTS
    space `none` alone on the edges the cell does not keep."""
    none = space.ops.index("none") if "none" in space.ops else None
    masks = {}
    for t, (nodes, _) in genotype.cells().items():
        m = torch.zeros(space.num_edges, space.num_ops, dtype=torch.bool, device=device)
        if none is not None:
            m[:, none] = True
        for node, kept in zip(space.nodes, nodes, strict=True):
            for op, src in kept:
                e = next(e for e in space.edges_into(node) if space.edges[e][0] == src)
                m[e] = False
                m[e, space.ops.index(op)] = True
        masks[t] = m
    return masks


def random_genotype(space: SearchSpace, rng: random.Random, rule: str = "darts") -> Genotype:
    """A genotype drawn uniformly from those ``rule`` can derive: NAS-Bench-201, any op on every edge (`none`
    included); DARTS space, per node 2 distinct inputs each with an op other than `none` (rule darts) or 2
    distinct (op, input) pairs (rule gdas)."""
    if rule not in ("darts", "gdas"):
        raise UserError(f"unknown derivation rule {rule!r}; valid: darts, gdas")
    real = [op for op in space.ops if op != "none"]
    cells: dict[str, tuple[Node, ...]] = {}
    for cell in space.cell_types:
        nodes: list[Node] = []
        for node in space.nodes:
            if space.name == "nb201":
                nodes.append(tuple((rng.choice(space.ops), src) for src in range(node)))
            elif rule == "darts":
                nodes.append(tuple((rng.choice(real), src) for src in sorted(rng.sample(range(node), 2))))
            else:
                pairs = [(op, src) for src in range(node) for op in real]
                nodes.append(tuple(sorted(rng.sample(pairs, 2), key=lambda e: (e[1], space.ops.index(e[0])))))
        cells[cell] = tuple(nodes)
    return check_genotype(genotype_from_cells(space, cells))


def neighbours(space: SearchSpace, g: Genotype) -> list[Genotype]:
    """The genotypes one op away from ``g``: each kept edge of each searched cell with each other op the edge may
    hold (NAS-Bench-201: any op, `none` included; DARTS space: any op but `none`), in edge order, then op order."""
    cells = {t: nodes for t, (nodes, _) in g.cells().items()}
    allowed = [op for op in space.ops if space.name == "nb201" or op != "none"]
    out = []
    for t, nodes in cells.items():
        for i, node in enumerate(nodes):
            for j, (op, src) in enumerate(node):
                for other in allowed:
                    if other != op:
                        changed = (*node[:j], (other, src), *node[j + 1:])
                        out.append(check_genotype(genotype_from_cells(space, {**cells, t: (*nodes[:i], changed,
                                                                                           *nodes[i + 1:])})))
    return out


def op_counts(g: Genotype) -> dict[str, Any]:
    """What a genotype is made of: edges, parameter-free edges (none, skip_connect, pooling: ops that learn
    nothing at stride 1), skip-connects, and the count of every op, over all its cells."""
    counts = Counter(op for nodes, _ in g.cells().values() for node in nodes for op, _ in node)
    free = sum(n for op, n in counts.items() if is_parameter_free(op))
    return {"edges": sum(counts.values()), "parameter_free": free, "skip_connect": counts["skip_connect"],
            "ops": dict(sorted(counts.items()))}


# ---------------------------------------------------------------------------------------------- formats

def from_dict(d: Any) -> Genotype:
    if not isinstance(d, dict):
        raise GenotypeError(f"a genotype JSON must be an object, not {type(d).__name__}")
    space = d.get("space")
    if space not in ("darts", "nb201"):
        raise GenotypeError(f"genotype JSON has space {space!r}; valid: darts, nb201")
    fixed = space == "darts" and isinstance(d.get("reduce"), str)
    if fixed and d["reduce"] != FIXED_REDUCE:
        raise GenotypeError(f"genotype JSON has reduce {d['reduce']!r}; valid: a list of nodes, or "
                            f"{FIXED_REDUCE!r} (GDAS-FRC's fixed reduction cell)")
    allowed = {"space", "normal", "normal_concat"} | ({"reduce", "reduce_concat"} if space == "darts" else set())
    if fixed:
        allowed.discard("reduce_concat")
    extra = sorted(set(d) - allowed)
    if extra:
        raise GenotypeError(f"genotype JSON has unknown key {extra[0]!r}; valid: {', '.join(sorted(allowed))}")
    parts: dict[str, Any] = {"reduce_fixed": True} if fixed else {}
    for name in sorted(allowed - {"space"} - ({"reduce"} if fixed else set())):
        if name not in d:
            raise GenotypeError(f"genotype JSON lacks {name!r}")
        parts[name] = _concat(d[name], name) if name.endswith("concat") else _nodes(d[name], name)
    return check_genotype(Genotype(space, **parts))


def _nodes(value: Any, name: str) -> tuple[Node, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"{name!r} must be a list of nodes, each a list of [op, input] pairs")
    return tuple(tuple(_edge(e, name) for e in _as_list(node, name)) for node in value)


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise GenotypeError(f"{name!r}: a node must be a list of [op, input] pairs, got {value!r}")
    return value


def _edge(e: Any, name: str) -> Edge:
    ok = (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
          and isinstance(e[1], int) and not isinstance(e[1], bool))
    if not ok:
        raise GenotypeError(f"{name!r}: an edge must be [op name, input node], got {e!r}")
    return (e[0], e[1])


def _concat(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise GenotypeError(f"{name!r} must be a list of node numbers, got {value!r}")
    return tuple(value)


def to_darts_text(g: Genotype) -> str:
    """DARTS' ``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`` notation; the fixed
    reduction cell is ``reduce=None, reduce_concat=None``."""
    if g.space != "darts":
        raise GenotypeError("only darts-space genotypes have a DARTS Genotype(...) text")
    for nodes in (g.normal, g.reduce):  # the fixed reduction cell has no nodes
        if any(len(node) != 2 for node in nodes):
            raise GenotypeError("the DARTS Genotype(...) text needs exactly 2 inputs per node")

    def edges(nodes: tuple[Node, ...]) -> str:
        return "[" + ", ".join(f"({op!r}, {src})" for node in nodes for op, src in node) + "]"

    def concat(c: tuple[int, ...]) -> str:
        contiguous = len(c) > 1 and list(c) == list(range(c[0], c[-1] + 1))
        return f"range({c[0]}, {c[-1] + 1})" if contiguous else str(list(c))

    reduce = ("reduce=None, reduce_concat=None" if g.reduce_fixed else
              f"reduce={edges(g.reduce)}, reduce_concat={concat(g.reduce_concat)}")
    return f"Genotype(normal={edges(g.normal)}, normal_concat={concat(g.normal_concat)}, {reduce})"


def from_darts_text(text: str) -> Genotype:
    """Parse DARTS' Genotype(...) text (optionally ``NAME = Genotype(...)``) by walking its syntax tree. ``reduce=None``
    (the official GDAS_F1's notation) is the fixed reduction cell; its reduce_concat is then ignored."""
    try:
        tree = ast.parse(text.strip(), mode="exec")
    except SyntaxError as e:
        raise GenotypeError(f"not a DARTS Genotype(...) text: {e.msg} at line {e.lineno}") from None
    if len(tree.body) != 1:
        raise GenotypeError("a DARTS genotype text holds exactly one Genotype(...) expression")
    stmt = tree.body[0]
    expr = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "Genotype"
            and not expr.args):
        raise GenotypeError("expected Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)")
    fields = {kw.arg: kw.value for kw in expr.keywords}
    want = ("normal", "normal_concat", "reduce", "reduce_concat")
    if set(fields) != set(want):
        missing = [k for k in want if k not in fields]
        extra = [str(k) for k in fields if k not in want]
        what = f"lacks {missing[0]}" if missing else f"has unknown field {extra[0]}"
        raise GenotypeError(f"Genotype(...) {what}; fields: {', '.join(want)}")
    fixed = isinstance(fields["reduce"], ast.Constant) and fields["reduce"].value is None
    parts: dict[str, Any] = {"reduce_fixed": True} if fixed else {}
    for name in want[:2] if fixed else want:
        parts[name] = _concat_node(fields[name], name) if name.endswith("concat") else _pairs(fields[name], name)
    return check_genotype(Genotype("darts", **parts))


def _literal(node: ast.expr, name: str) -> Any:
    try:
        return ast.literal_eval(node)  # literals only: numbers, strings, lists, tuples; never code
    except ValueError:
        raise GenotypeError(f"{name} must be a literal list, got {ast.unparse(node)!r}") from None


def _pairs(node: ast.expr, name: str) -> tuple[Node, ...]:
    flat = _literal(node, name)
    if not isinstance(flat, list):
        raise GenotypeError(f"{name} must be a list of (op, input) pairs")
    edges = [_edge(e, name) for e in flat]
    if len(edges) % 2:
        raise GenotypeError(f"{name} must hold 2 (op, input) pairs per node, got {len(edges)} pairs")
    return tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), 2))


def _concat_node(node: ast.expr, name: str) -> tuple[int, ...]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, name) for a in node.args]
        if not (1 <= len(args) <= 2 and all(isinstance(a, int) for a in args)) or node.keywords:
            raise GenotypeError(f"{name} must be range(a, b) or a list of node numbers")
        return tuple(range(*args))
    value = _literal(node, name)
    return _concat(list(value) if isinstance(value, tuple) else value, name)


def to_nb201_string(g: Genotype) -> str:
    if g.space != "nb201":
        raise GenotypeError("only nb201 genotypes have an NB201 string")
    return "+".join("|" + "|".join(f"{op}~{src}" for op, src in node) + "|" for node in g.normal)


def from_nb201_string(text: str) -> Genotype:
    s = text.strip()
    nodes: list[Node] = []
    for part in s.split("+"):
        if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
            raise GenotypeError(f"not an NB201 string (|op~0|+|op~0|op~1|+|op~0|op~1|op~2|): {s!r}")
        edges: list[Edge] = []
        for item in part[1:-1].split("|"):
            op, sep, src = item.partition("~")
            if not sep or not src.isdigit():
                raise GenotypeError(f"NB201 edge {item!r} is not of the form op~input")
            edges.append((op, int(src)))
        nodes.append(tuple(edges))
    return check_genotype(Genotype("nb201", tuple(nodes), (3,)))


def parse_genotype(text: str) -> Genotype:
    """Parse any of the three formats, told apart by their first character."""
    s = text.strip()
    if s.startswith("{"):
        try:
            return from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype JSON is malformed: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if s.startswith("|"):
        return from_nb201_string(s)
    if "Genotype(" in s:
        return from_darts_text(s)
    short = s if len(s) <= 60 else s[:57] + "..."
    raise GenotypeError(f"cannot read genotype {short!r}; expected JSON ({{...}}), DARTS Genotype(...) text "
                        "or an NB201 string (|op~0|+...)")


def read_genotype(path: str | Path) -> Genotype:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenotypeError(f"cannot read genotype file {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return parse_genotype(text)
    except GenotypeError as e:
        raise GenotypeError(f"{p}: {e}") from None


# ---------------------------------------------------------------------------------------------- published

# Published CIFAR-10 cells of the DARTS (NASNet-like) space, as data: (DARTS Genotype text, source).
PUBLISHED: dict[str, tuple[str, str]] = {
    "DARTS_V1": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Liu et al., DARTS (first order), ICLR 2019; github.com/quark0/darts cnn/genotypes.py"),
    "DARTS_V2": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Liu et al., DARTS (second order), ICLR 2019; github.com/quark0/darts cnn/genotypes.py"),
    "GDAS_V1": (
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_5x5', 1)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Dong & Yang, GDAS, CVPR 2019; github.com/D-X-Y/AutoDL-Projects lib/nas_infer_model/DXYs/genotypes.py"),
    "GDAS_F1": (
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_3x3', 2), "
        "('skip_connect', 0), ('sep_conv_3x3', 2), ('skip_connect', 0), ('sep_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=None, reduce_concat=[2, 3, 4, 5])",
        "Dong & Yang, GDAS with a fixed reduction cell (GDAS-FRC), CVPR 2019; github.com/D-X-Y/AutoDL-Projects "
        "lib/nas_infer_model/DXYs/genotypes.py"),
    "PC_DARTS": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
        "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
        "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
        "reduce_concat=range(2, 6))",
        "Xu et al., PC-DARTS, ICLR 2020; github.com/yuhuixu1993/PC-DARTS genotypes.py (PC_DARTS_cifar)"),
    "PDARTS": (
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
        "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
        "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], "
        "reduce_concat=range(2, 6))",
        "Chen et al., P-DARTS, ICCV 2019; github.com/chenxin061/pdarts genotypes.py"),
    "DrNAS": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3)], "
        "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('sep_conv_5x5', 1), ('dil_conv_5x5', 3), ('skip_connect', 4), ('sep_conv_5x5', 1)], "
        "reduce_concat=range(2, 6))",
        "Chen et al., DrNAS, ICLR 2021; github.com/xiangning-chen/DrNAS DARTS-space/genotypes.py (DrNAS_cifar10)"),
    "NASNet": (
        "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
        "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), "
        "('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), "
        "('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
        "Zoph et al., NASNet-A, CVPR 2018, as transcribed in github.com/quark0/darts cnn/genotypes.py"),
    "AmoebaNet": (
        "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), "
        "('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
        "('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
        "Real et al., AmoebaNet-A, AAAI 2019, as transcribed in github.com/quark0/darts cnn/genotypes.py"),
}


def published_genotype(name: str) -> Genotype:
    if name not in PUBLISHED:
        near = difflib.get_close_matches(name, list(PUBLISHED), n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise GenotypeError(f"unknown genotype name {name!r}{hint}; published: {', '.join(PUBLISHED)}")
    return from_darts_text(PUBLISHED[name][0])


def load_genotype(source: str) -> Genotype:
    """A genotype from a published name, a file (any format), a run directory (its genotype.json) or a
    genotype string."""
    s = source.strip()
    if s in PUBLISHED:
        return published_genotype(s)
    if s.startswith(("{", "|")) or "Genotype(" in s:
        return parse_genotype(s)
    p = Path(source)
    if p.is_dir():
        if not (p / GENOTYPE).is_file():
            raise GenotypeError(f"run directory {source!r} has no genotype.json (has its search finished?)")
        return read_genotype(p / GENOTYPE)
    if p.is_file():
        return read_genotype(p)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", s):  # looks like a name, not a path
        published_genotype(s)  # raises: unknown name, with the nearest published one
    raise GenotypeError(f"genotype {source!r} is neither a file, a run directory nor a genotype string "
                        "(JSON, DARTS Genotype(...) text or NB201 |op~0|+... string)")


def write_genotype(g: Genotype, path: str | Path) -> None:
    Path(path).write_text(g.to_json())


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.space.genotype", "genotype"))
