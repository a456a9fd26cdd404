"""The NAS-Bench-201 space (Dong & Yang, ICLR 2020, Sec. 3): one input node and three nodes each fed by every earlier
node (6 edges), output = the last node; one cell type, in every position of its macro skeleton. A derived cell keeps
every edge with its argmax op, `none` included; NAS-Bench-201 holds every such cell.

Its genotype text is the NB201 string ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|
nor_conv_1x1~2|``. Its networks (nas/space/network.py) are the skeleton of Dong & Yang (Fig. 1): stem, three stages
of N cells, residual reduction blocks between the stages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nas.errors import UserError
from nas.space.genotype import Edge, Genotype, GenotypeError, Node, check_genotype, check_op
from nas.space.network import NB201Cell, NB201Network
from nas.space.ops import BUILTIN_OPS, ResBlock, list_ops
from nas.space.spaces import CostSlot, SearchDag, Space

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@dataclass(frozen=True)
class NB201Space(Space):
    ops: tuple[str, ...] = NB201_OPS
    cell_types: tuple[str, ...] = ("normal",)
    macro: str = "darts"  # model.macro's default: the space has one search network

    name: ClassVar[str] = "nb201"
    num_inputs: ClassVar[int] = 1
    num_nodes: ClassVar[int] = 3
    concat_all: ClassVar[bool] = False
    kept_inputs: ClassVar[int | None] = None
    macros: ClassVar[tuple[str, ...]] = ("darts",)
    alpha_rules: ClassVar[tuple[str, ...]] = ("darts",)
    derivation: ClassVar[str] = "the argmax op of every edge"
    stem_multiplier: ClassVar[int] = 1
    budget_network: ClassVar[tuple[int, int]] = (16, 5)  # NAS-Bench-201's training network
    benchmarked: ClassVar[bool] = True
    stacks: ClassVar[bool] = True
    text_format: ClassVar[str] = "an NB201 string (|op~0|+...)"
    input_labels: ClassVar[tuple[str, ...]] = ("in",)
    output_label: ClassVar[str] = "out"

    # ------------------------------------------------------------------------------------------ cells and genotypes

    def cell_ops(self) -> list[str]:
        """Its own ops and those a user registered; never another built-in op."""
        return [*NB201_OPS, *(op for op in list_ops() if op not in NB201_OPS and op not in BUILTIN_OPS)]

    def genotype(self, cells: dict[str, tuple[Node, ...]]) -> Genotype:
        return Genotype(self.name, cells["normal"], self.concat)

    def searched_cells(self, g: Genotype) -> dict[str, tuple[tuple[Node, ...], tuple[int, ...]]]:
        return {"normal": (g.normal, g.normal_concat)}

    def check_genotype(self, g: Genotype) -> None:
        if g.reduce_fixed:
            raise GenotypeError("only a darts-space genotype may have the fixed reduction cell, and then no reduce "
                                "nodes")
        if g.reduce or g.reduce_concat:
            raise GenotypeError("an nb201 genotype has only a normal cell, not a reduce cell")
        if len(g.normal) != self.num_nodes:
            raise GenotypeError(f"an nb201 cell has 3 nodes, got {len(g.normal)}")
        for i, node in enumerate(g.normal, start=1):
            srcs = [src for _, src in node]
            if srcs != list(range(i)):
                raise GenotypeError(f"nb201 node {i} must have one edge from each of nodes 0..{i - 1} in order, "
                                    f"got inputs {srcs}")
            for op, _ in node:
                check_op(op, self.cell_ops(), " in an nb201 cell")
        if tuple(g.normal_concat) != self.concat:
            raise GenotypeError(f"an nb201 cell outputs node 3, got concat {list(g.normal_concat)}")

    def derive_cell(self, w: torch.Tensor, rule: str) -> tuple[Node, ...]:
        """Every edge with its argmax op, `none` included (one rule)."""
        ops = self.ops
        rows = w.tolist()  # (E, K) softmax weights
        return tuple(tuple((ops[max(range(len(ops)), key=lambda k: rows[e][k])], self.edges[e][0])
                           for e in self.edges_into(node)) for node in self.nodes)

    def random_node(self, rng: random.Random, node: int, rule: str) -> Node:
        """Any op on every edge, `none` included."""
        return tuple((rng.choice(self.ops), src) for src in range(node))

    # ------------------------------------------------------------------------------------------ the genotype's text

    def to_text(self, g: Genotype) -> str:
        return to_nb201_string(g)

    def reads(self, text: str) -> bool:
        return text.startswith("|")

    def parse_text(self, text: str) -> Genotype:
        return from_nb201_string(text)

    # ------------------------------------------------------------------------------------------ networks

    def check_network(self, *, layers: int, auxiliary: bool = False, drop_path: bool = False,
                      stem_multiplier: int | None = None) -> None:
        if auxiliary or drop_path:
            raise UserError("model.auxiliary_weight and model.drop_path apply only to darts-space networks (an "
                            "auxiliary head exists only there); set both to 0 for an nb201 network")
        if stem_multiplier not in (None, 1):
            raise UserError(f"model.stem_multiplier={stem_multiplier} is not valid for model.space=nb201, whose "
                            "stem has C channels; valid: null or 1")

    def network(self, g: Genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool, in_channels: int,
                stem_multiplier: int | None) -> nn.Module:
        """``layers`` cells per stage (N)."""
        return NB201Network(g, C=C, N=layers, num_classes=num_classes, in_channels=in_channels)

    def search_layers(self, dag: SearchDag, *, C: int, layers: int, num_classes: int, in_channels: int,
                      stem_multiplier: int | None) -> dict[str, nn.Module]:
        """The skeleton of Dong & Yang (Fig. 1) with a searched cell, one shared by every position."""
        stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells = nn.ModuleList()
        C_prev = C
        for stage in range(3):
            C_curr = C * 2 ** stage
            if stage > 0:
                cells.append(ResBlock(C_prev, C_curr, stride=2))
            cells.extend(dag(C_curr, False, self.pool_bn) for _ in range(layers))
            C_prev = C_curr
        return {"stem": stem, "cells": cells, "lastact": nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True)),
                "pool": nn.AdaptiveAvgPool2d(1), "classifier": nn.Linear(C_prev, num_classes)}

    def search_forward(self, net: Any, x: torch.Tensor, mixings: dict[str, Any]) -> torch.Tensor:
        mixing = mixings["normal"]
        h = net.stem(x)
        for cell in net.cells:
            h = cell(h) if isinstance(cell, ResBlock) else cell([h], mixing)
        return net.classifier(net.pool(net.lastact(h)).flatten(1))

    # ------------------------------------------------------------------------------------------ costs

    def cover_genotypes(self, op: str) -> list[Genotype]:
        """One genotype: ``op`` on every edge."""
        every = tuple(tuple((op, src) for src, dst in self.edges if dst == node) for node in self.nodes)
        return [self.genotype({"normal": every})]

    def cost_slots(self, net: nn.Module, g: Genotype) -> list[CostSlot]:
        """The ops of every NB201Cell (the reduction blocks are part of the network outside the cells)."""
        slots: list[CostSlot] = []
        for i, cell in enumerate(net.cells):  # type: ignore[arg-type]
            if isinstance(cell, NB201Cell):
                slots += self.cell_slots(f"cells.{i}.ops", "normal", g)
        return slots


# ---------------------------------------------------------------------------------------------- NB201 string

def to_nb201_string(g: Genotype) -> str:
    if g.space != NB201Space.name:
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
    return check_genotype(Genotype(NB201Space.name, tuple(nodes), (3,)))
