"""Search spaces as data: the candidate ops and the nodes and edges of a cell.

DARTS (Liu et al., ICLR 2019, Sec. 2.1): two input nodes (the outputs of the two previous cells), four
intermediate nodes each fed by every earlier node (14 edges), output = concat of the intermediate nodes;
normal and reduction cells. NAS-Bench-201 (Dong & Yang, ICLR 2020, Sec. 3): one input node and three
nodes each fed by every earlier node (6 edges), output = the last node; one cell type.

Nodes are numbered globally: inputs first (0, 1 in DARTS; 0 in NAS-Bench-201), then the intermediate
nodes. Edges are ordered by destination node, then by source: the row order of alpha.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from nas.errors import UserError

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    ops: tuple[str, ...]          # candidate ops, in the column order of alpha
    num_inputs: int               # input nodes of a cell
    num_nodes: int                # intermediate nodes
    cell_types: tuple[str, ...]   # the cell types that own an alpha
    concat_all: bool              # output = concat of all intermediate nodes (else: the last node)

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(src, dst) per edge, ordered by dst then src."""
        first = self.num_inputs
        return tuple((src, dst) for dst in range(first, first + self.num_nodes) for src in range(dst))

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def nodes(self) -> range:
        """Global ids of the intermediate nodes."""
        return range(self.num_inputs, self.num_inputs + self.num_nodes)

    def edges_into(self, node: int) -> list[int]:
        """Indices (rows of alpha) of the edges that end at ``node``."""
        return [i for i, (_, dst) in enumerate(self.edges) if dst == node]

    @property
    def concat(self) -> tuple[int, ...]:
        """Nodes whose outputs form the cell output."""
        return tuple(self.nodes) if self.concat_all else (self.nodes[-1],)


SPACES: dict[str, SearchSpace] = {
    "darts": SearchSpace("darts", DARTS_OPS, num_inputs=2, num_nodes=4, cell_types=("normal", "reduce"),
                         concat_all=True),
    "nb201": SearchSpace("nb201", NB201_OPS, num_inputs=1, num_nodes=3, cell_types=("normal",),
                         concat_all=False),
}


def space_ops(name: str) -> list[str]:
    """The ops a cell of the space ``name`` may hold: the space's own, the other ops of its family (DARTS-space cells:
    every built-in op but NAS-Bench-201's convolutions, as published cells such as AmoebaNet's use them) and the ops
    a user registered (nas.space.ops.register_op); never the other space's own."""
    from nas.space.ops import BUILTIN_OPS, list_ops

    own = get_space(name).ops
    foreign = BUILTIN_OPS - set(NB201_OPS) if name == "nb201" else set(NB201_OPS) - set(DARTS_OPS)
    return [*own, *(op for op in list_ops() if op not in own and op not in foreign)]


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name]


def search_space(name: str, ops: tuple[str, ...] | None = None, macro: str = "darts") -> SearchSpace:
    """The space a search runs in: ``ops`` (model.ops) replaces the candidate ops; ``macro="gdas_frc"`` (GDAS with
    a fixed reduction cell) searches the normal cell only."""
    space = get_space(name)
    if ops is not None:
        space = dataclasses.replace(space, ops=tuple(ops))
    if macro == "gdas_frc":
        space = dataclasses.replace(space, cell_types=("normal",))
    return space


@dataclass(frozen=True)
class CellPlace:
    """One cell of the DARTS macro skeleton: the channels of its two inputs, its own channels (C), and whether it
    and the cell before it reduce."""

    C_pp: int
    C_p: int
    C: int
    reduction: bool
    reduction_prev: bool


def darts_skeleton(C: int, layers: int, stem_multiplier: int, width: Callable[[bool], int]
                   ) -> tuple[int, list[CellPlace], list[int]]:
    """The DARTS macro skeleton (Liu et al. 2019), which the search network, the trained network and a budget's cost
    network all follow: a stem of stem_multiplier * C channels, then ``layers`` cells, reductions at a third and two
    thirds of the depth, each doubling C; a cell's output has width(reduction) * its C channels (the nodes it
    concatenates). Returns the stem's channels, each cell's place, and each cell's output channels."""
    stem = stem_multiplier * C
    C_pp, C_p, C_curr = stem, stem, C
    places, outs = [], []
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        places.append(CellPlace(C_pp, C_p, C_curr, reduction, reduction_prev))
        reduction_prev = reduction
        C_pp, C_p = C_p, width(reduction) * C_curr
        outs.append(C_p)
    return stem, places, outs
