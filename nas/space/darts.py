"""The DARTS (NASNet-like) space (Liu et al., ICLR 2019, Sec. 2.1): two input nodes (the outputs of the two previous
cells), four intermediate nodes each fed by every earlier node (14 edges), output = concat of the intermediate nodes;
a normal and a reduction cell. A derived node keeps 2 distinct inputs, each with an op other than `none`.

Its genotype text is DARTS' ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=...,
reduce_concat=...)``, parsed by walking its syntax tree, never evaluated. A genotype may leave its reduction cell to
GDAS-FRC's fixed, hand-designed one (Dong & Yang, CVPR 2019, Sec. 4.1; nas.space.ops.FixedReductionCell): DARTS text
reduce=None, as the official GDAS_F1 writes it. Its networks (nas/space/network.py) follow the DARTS macro skeleton;
its search networks (model.macro) are DARTS's (a BN after every pooling op), GDAS's NASNet one (none after pooling, a
BN-ReLU before the global pooling) and that one with GDAS-FRC's fixed reduction cell, only the normal cell searched.
"""

from __future__ import annotations

import ast
import dataclasses
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nas.errors import UserError
from nas.space.genotype import Edge, Genotype, GenotypeError, Node, check_genotype, check_op, parse_concat, parse_edge
from nas.space.network import DartsCell, DartsNetwork, darts_skeleton
from nas.space.ops import FactorizedReduce, FixedReductionCell, ReLUConvBN, list_ops
from nas.space.spaces import CostSlot, SearchDag, Space, get_space, list_spaces

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
KEPT = 2  # the inputs a derived node keeps


@dataclass(frozen=True)
class DartsSpace(Space):
    ops: tuple[str, ...] = DARTS_OPS
    cell_types: tuple[str, ...] = ("normal", "reduce")
    macro: str = "darts"

    name: ClassVar[str] = "darts"
    num_inputs: ClassVar[int] = 2
    num_nodes: ClassVar[int] = 4
    concat_all: ClassVar[bool] = True
    kept_inputs: ClassVar[int | None] = KEPT
    macros: ClassVar[tuple[str, ...]] = ("darts", "gdas", "gdas_frc")
    alpha_rules: ClassVar[tuple[str, ...]] = ("darts", "gdas")
    derivation: ClassVar[str] = "2 distinct inputs per node"
    stem_multiplier: ClassVar[int] = 3
    budget_network: ClassVar[tuple[int, int]] = (36, 20)
    text_format: ClassVar[str] = "DARTS Genotype(...) text"
    input_labels: ClassVar[tuple[str, ...]] = ("c_{k-2}", "c_{k-1}")
    output_label: ClassVar[str] = "c_{k}"

    def with_macro(self, macro: str) -> Space:
        """gdas_frc searches the normal cell only: the reduction cell is the fixed one."""
        space = super().with_macro(macro)
        return dataclasses.replace(space, cell_types=("normal",) if macro == "gdas_frc" else ("normal", "reduce"))

    # ------------------------------------------------------------------------------------------ cells and genotypes

    def cell_ops(self) -> list[str]:
        """Its own ops, the other built-in ops of its family (published cells such as AmoebaNet's use them) and the
        ops a user registered; never another space's own."""
        others = {op for name in list_spaces() if name != self.name for op in get_space(name).ops}
        return [*DARTS_OPS, *(op for op in list_ops() if op not in DARTS_OPS and op not in others)]

    def genotype(self, cells: dict[str, tuple[Node, ...]]) -> Genotype:
        """A space that searches no reduction cell (GDAS-FRC) gets the fixed one."""
        if "reduce" not in cells:
            return Genotype(self.name, cells["normal"], self.concat, reduce_fixed=True)
        return Genotype(self.name, cells["normal"], self.concat, cells["reduce"], self.concat)

    def searched_cells(self, g: Genotype) -> dict[str, tuple[tuple[Node, ...], tuple[int, ...]]]:
        """normal, and reduce unless it is the fixed one."""
        out = {"normal": (g.normal, g.normal_concat)}
        if not g.reduce_fixed:
            out["reduce"] = (g.reduce, g.reduce_concat)
        return out

    def check_genotype(self, g: Genotype) -> None:
        if g.reduce_fixed and (g.reduce or g.reduce_concat):
            raise GenotypeError("only a darts-space genotype may have the fixed reduction cell, and then no reduce "
                                "nodes")
        valid_ops = [op for op in self.cell_ops() if op != "none"]
        for name, (nodes, concat) in self.searched_cells(g).items():
            if not nodes:
                raise GenotypeError(f"the {name} cell has no nodes")
            for i, node in enumerate(nodes):
                if not node:
                    raise GenotypeError(f"{name} node {i + 2} has no input edges")
                for op, src in node:
                    check_op(op, valid_ops, f" in the {name} cell")
                    if not 0 <= src < i + 2:
                        raise GenotypeError(f"{name} node {i + 2} takes input {src}, but only nodes 0..{i + 1} "
                                            "come before it")
            n = len(nodes) + 2
            if not concat or any(not 0 <= c < n for c in concat):
                raise GenotypeError(f"{name}_concat {list(concat)} must name nodes among 0..{n - 1}")

    def derive_cell(self, w: torch.Tensor, rule: str) -> tuple[Node, ...]:
        """darts: the 2 strongest distinct inputs by their best op other than `none`; gdas: the top-2 (op, input)
        pairs."""
        ops = self.ops
        rows = w.tolist()  # (E, K) softmax weights
        real = [k for k, op in enumerate(ops) if op != "none"]
        nodes: list[Node] = []
        for node in self.nodes:
            edge_ids = self.edges_into(node)
            if rule == "darts":
                best = {e: max(real, key=lambda k: rows[e][k]) for e in edge_ids}
                strongest = sorted(edge_ids, key=lambda e: -rows[e][best[e]])[:KEPT]  # stable: ties keep order
                nodes.append(tuple((ops[best[e]], self.edges[e][0]) for e in strongest))
            else:
                pairs = [(e, k) for e in edge_ids for k in real]
                top = sorted(pairs, key=lambda ek: -rows[ek[0]][ek[1]])[:KEPT]
                nodes.append(tuple((ops[k], self.edges[e][0]) for e, k in top))
        return tuple(nodes)

    def random_node(self, rng: random.Random, node: int, rule: str) -> Node:
        """darts: 2 distinct inputs, each with an op other than `none`; gdas: 2 distinct (op, input) pairs."""
        real = list(self.kept_ops)
        if rule == "darts":
            return tuple((rng.choice(real), src) for src in sorted(rng.sample(range(node), KEPT)))
        pairs = [(op, src) for src in range(node) for op in real]
        return tuple(sorted(rng.sample(pairs, KEPT), key=lambda e: (e[1], self.ops.index(e[0]))))

    # ------------------------------------------------------------------------------------------ the genotype's text

    def to_text(self, g: Genotype) -> str:
        return to_darts_text(g)

    def reads(self, text: str) -> bool:
        return "Genotype(" in text

    def parse_text(self, text: str) -> Genotype:
        return from_darts_text(text)

    # ------------------------------------------------------------------------------------------ networks

    def check_network(self, *, layers: int, auxiliary: bool = False, drop_path: bool = False,
                      stem_multiplier: int | None = None) -> None:
        if layers < 3:
            raise UserError(f"model.layers={layers} is too few for model.space=darts, which needs a normal cell "
                            "before each of its 2 reduction cells; valid: model.layers >= 3")

    def network(self, g: Genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool, in_channels: int,
                stem_multiplier: int | None) -> nn.Module:
        """The CIFAR evaluation network of Liu et al. (nas.space.network.DartsNetwork)."""
        return DartsNetwork(g, C=C, layers=layers, num_classes=num_classes, auxiliary=auxiliary,
                            in_channels=in_channels,
                            stem_multiplier=self.stem_multiplier if stem_multiplier is None else stem_multiplier)

    @property
    def pool_bn(self) -> bool:
        """DARTS's search network: a BN after every pooling op."""
        return self.macro == "darts"

    def search_layers(self, dag: SearchDag, *, C: int, layers: int, num_classes: int, in_channels: int,
                      stem_multiplier: int | None) -> dict[str, nn.Module]:
        """The search network of Liu et al. (Sec. 3.1): a stem, ``layers`` cells with reductions at a third and two
        thirds, global pooling and a linear classifier. macro gdas is the official GDAS (NASNet) one: the same cell
        layout (6 cells give its N=2: 2 normal, reduce, 1 normal, reduce, 1 normal), no BN after pooling ops, and a
        BN-ReLU before the global pooling; gdas_frc is that network with GDAS-FRC's fixed reduction cell in both
        reduction positions (then only the normal cell has an alpha: cell_types say which cells are searched)."""
        fixed = "reduce" not in self.cell_types  # GDAS-FRC: the fixed reduction cell (4 nodes out)
        stem_c, places, outs = darts_skeleton(C, layers, self.stem_multiplier if stem_multiplier is None
                                              else stem_multiplier,
                                              lambda reduction: 4 if reduction and fixed else len(self.concat))
        stem = nn.Sequential(nn.Conv2d(in_channels, stem_c, 3, padding=1, bias=False), nn.BatchNorm2d(stem_c))
        cells = nn.ModuleList()
        for p in places:
            cell: nn.Module
            if p.reduction and fixed:
                cell = FixedReductionCell(p.C_pp, p.C_p, p.C, p.reduction_prev, affine=False)
            else:
                cell = DartsSearchCell(p.C_pp, p.C_p, p.C, p.reduction, p.reduction_prev, dag, self.pool_bn)
            cells.append(cell)
        C_p = outs[-1]
        lastact: nn.Module = (nn.Sequential(nn.BatchNorm2d(C_p), nn.ReLU(inplace=True)) if self.macro != "darts"
                              else nn.Identity())
        return {"stem": stem, "cells": cells, "lastact": lastact, "pool": nn.AdaptiveAvgPool2d(1),
                "classifier": nn.Linear(C_p, num_classes)}

    def search_forward(self, net: Any, x: torch.Tensor, mixings: dict[str, Any]) -> torch.Tensor:
        s0 = s1 = net.stem(x)
        for cell in net.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, mixings[kind]) if kind in mixings else cell(s0, s1)  # the fixed cell: no mixing
        return net.classifier(net.pool(net.lastact(s1)).flatten(1))

    # ------------------------------------------------------------------------------------------ costs

    def cover_genotypes(self, op: str) -> list[Genotype]:
        """Three genotypes, since a node keeps two of its up to five inputs."""
        out = []
        for r in range(3):
            cell: tuple[Node, ...] = tuple(((op, (2 * r) % node), (op, (2 * r + 1) % node)) for node in self.nodes)
            out.append(self.genotype({t: cell for t in self.cell_types}))
        return out

    def cost_slots(self, net: nn.Module, g: Genotype) -> list[CostSlot]:
        """The ops of the DartsCells (a fixed reduction cell is part of the network outside the searched cells)."""
        slots: list[CostSlot] = []
        for i, cell in enumerate(net.cells):  # type: ignore[arg-type]
            if isinstance(cell, DartsCell):
                slots += self.cell_slots(f"cells.{i}.ops", "reduce" if cell.reduction else "normal", g)
        return slots


class DartsSearchCell(nn.Module):
    """A DARTS search cell: preprocess the outputs of the two previous cells to C channels, then the DAG of mixed
    edges that ``dag`` builds."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool, dag: SearchDag,
                 pool_bn: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                                       else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.dag = dag(C, reduction, pool_bn)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mixing: Any) -> torch.Tensor:
        return self.dag([self.preprocess0(s0), self.preprocess1(s1)], mixing)


# ---------------------------------------------------------------------------------------------- DARTS text

def to_darts_text(g: Genotype) -> str:
    """DARTS' ``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`` notation; the fixed
    reduction cell is ``reduce=None, reduce_concat=None``."""
    if g.space != DartsSpace.name:
        raise GenotypeError("only darts-space genotypes have a DARTS Genotype(...) text")
    for nodes in (g.normal, g.reduce):  # the fixed reduction cell has no nodes
        if any(len(node) != KEPT for node in nodes):
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
    return check_genotype(Genotype(DartsSpace.name, **parts))


def _literal(node: ast.expr, name: str) -> Any:
    try:
        return ast.literal_eval(node)  # literals only: numbers, strings, lists, tuples; never code
    except ValueError:
        raise GenotypeError(f"{name} must be a literal list, got {ast.unparse(node)!r}") from None


def _pairs(node: ast.expr, name: str) -> tuple[Node, ...]:
    flat = _literal(node, name)
    if not isinstance(flat, list):
        raise GenotypeError(f"{name} must be a list of (op, input) pairs")
    edges: list[Edge] = [parse_edge(e, name) for e in flat]
    if len(edges) % KEPT:
        raise GenotypeError(f"{name} must hold 2 (op, input) pairs per node, got {len(edges)} pairs")
    return tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), KEPT))


def _concat_node(node: ast.expr, name: str) -> tuple[int, ...]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, name) for a in node.args]
        if not (1 <= len(args) <= 2 and all(isinstance(a, int) for a in args)) or node.keywords:
            raise GenotypeError(f"{name} must be range(a, b) or a list of node numbers")
        return tuple(range(*args))
    value = _literal(node, name)
    return parse_concat(list(value) if isinstance(value, tuple) else value, name)
