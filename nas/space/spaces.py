"""A search space as one object: the topology of its cells (data) and what the space does its own way (methods of
its class), with the registry of spaces (register_space, get_space, list_spaces).

Every space has cells of input nodes, then intermediate nodes each fed by every earlier node; nodes are numbered
globally (inputs first), and edges are ordered by destination node, then by source: the row order of alpha. What
differs from space to space is a method of its class: how a cell is derived from alpha and drawn at random, which
cells a genotype holds and how they are checked, the genotype's text, the networks it builds (trained, and the
supernet's macro around the searched cells), what a cell costs in them, and the facts other code asks (its stem, the
network a budget is counted on, whether NAS-Bench-201 holds its cells). nas/space/darts.py and nas/space/nb201.py are
the two built in; nas/space/__init__.py registers them.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from nas.errors import UserError

if TYPE_CHECKING:
    import random

    import torch
    from torch import nn

    from nas.space.genotype import Genotype, Node

# builds one searched cell's DAG of mixed edges (nas.searching.supernet.SearchCell): (C, reduction, pool_bn) -> module
SearchDag = Callable[[int, bool, bool], "nn.Module"]
CostSlot = tuple[str, str, int, int]  # (module name, cell type, edge, op) of one searched op in a network


@dataclass(frozen=True)
class Space(ABC):
    """One search space. The fields are what a search may change (its candidate ops, the cell types it searches,
    its search network); the class variables are the space's topology and facts."""

    ops: tuple[str, ...]          # candidate ops, in the column order of alpha
    cell_types: tuple[str, ...]   # the cell types that own an alpha
    macro: str                    # the search network (model.macro): one of ``macros``

    name: ClassVar[str]
    num_inputs: ClassVar[int]            # input nodes of a cell
    num_nodes: ClassVar[int]             # intermediate nodes
    concat_all: ClassVar[bool]           # output = concat of all intermediate nodes (else: the last node)
    kept_inputs: ClassVar[int | None]    # the inputs a derived node keeps (None: every one, each edge kept)
    macros: ClassVar[tuple[str, ...]]    # its search networks; the first is the standard one
    alpha_rules: ClassVar[tuple[str, ...]]  # the rules that derive its cells from alpha (search.derive)
    derivation: ClassVar[str]            # what its derived cells keep, as messages say it
    stem_multiplier: ClassVar[int]       # the stem's channels over C (model.stem_multiplier=null)
    budget_network: ClassVar[tuple[int, int]]  # (C, layers) of the network a budget counts costs on by default
    benchmarked: ClassVar[bool] = False  # NAS-Bench-201 holds every cell of the space (nas/bench201.py)
    stacks: ClassVar[bool] = False       # networks of several cells train as one module (nas/space/stacked.py)
    text_format: ClassVar[str]           # its genotype text, as messages name it
    input_labels: ClassVar[tuple[str, ...]]  # the input nodes' labels in cell drawings
    output_label: ClassVar[str]          # the cell output's label

    # ------------------------------------------------------------------------------------------ topology

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

    @property
    def kept_ops(self) -> tuple[str, ...]:
        """The candidate ops an edge a cell keeps may hold (a DARTS-space cell drops an edge rather than keep
        `none` on it)."""
        return self.ops if self.kept_inputs is None else tuple(op for op in self.ops if op != "none")

    def searching(self, ops: tuple[str, ...] | None = None, macro: str | None = None) -> Space:
        """The space a search runs in: ``ops`` (model.ops) replaces the candidate ops, ``macro`` (model.macro) the
        search network."""
        space = self if ops is None else dataclasses.replace(self, ops=tuple(ops))
        return space if macro is None else space.with_macro(macro)

    def with_macro(self, macro: str) -> Space:
        """The space whose search network is ``macro``."""
        known = list(dict.fromkeys(m for space in _SPACES.values() for m in space.macros))
        if macro not in known:
            near = difflib.get_close_matches(str(macro), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UserError(f"model.macro={macro!r} is not valid{hint}; valid: {', '.join(known)}")
        if macro not in self.macros:
            own = ("has one search network" if len(self.macros) == 1 else
                   f"searches in {', '.join(self.macros)}")
            raise UserError(f"model.macro={macro} applies only to model.space="
                            f"{spaces_where(lambda s: macro in s.macros)}; the {self.name} space {own}")
        return dataclasses.replace(self, macro=macro)

    # ------------------------------------------------------------------------------------------ cells and genotypes

    @abstractmethod
    def cell_ops(self) -> list[str]:
        """The ops a cell of the space may hold: its own and those a user registered (nas.space.ops.register_op)."""

    @abstractmethod
    def genotype(self, cells: dict[str, tuple[Node, ...]]) -> Genotype:
        """The genotype of the space's searched cells (one per cell type of ``cell_types``)."""

    @abstractmethod
    def searched_cells(self, g: Genotype) -> dict[str, tuple[tuple[Node, ...], tuple[int, ...]]]:
        """(nodes, concat) of each cell a genotype of the space holds."""

    @abstractmethod
    def check_genotype(self, g: Genotype) -> None:
        """Raise GenotypeError unless ``g`` is a well-formed genotype of the space."""

    @abstractmethod
    def derive_cell(self, w: torch.Tensor, rule: str) -> tuple[Node, ...]:
        """The cell that softmax weights ``w`` (E, K) stand for under the alpha rule ``rule``."""

    @abstractmethod
    def random_node(self, rng: random.Random, node: int, rule: str) -> Node:
        """The edges into ``node`` drawn uniformly from those ``rule`` can derive."""

    # ------------------------------------------------------------------------------------------ the genotype's text

    @abstractmethod
    def to_text(self, g: Genotype) -> str:
        """The genotype in the space's own notation."""

    @abstractmethod
    def reads(self, text: str) -> bool:
        """Whether ``text`` (stripped) is in the space's notation."""

    @abstractmethod
    def parse_text(self, text: str) -> Genotype:
        """The genotype that ``text``, in the space's notation, stands for (parsed, never evaluated)."""

    # ------------------------------------------------------------------------------------------ networks

    @abstractmethod
    def check_network(self, *, layers: int, auxiliary: bool = False, drop_path: bool = False,
                      stem_multiplier: int | None = None) -> None:
        """Raise UserError unless a network of the space (searched or trained) can be built from these settings."""

    @abstractmethod
    def network(self, g: Genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool, in_channels: int,
                stem_multiplier: int | None) -> nn.Module:
        """The network a genotype of the space is trained in."""

    @property
    def pool_bn(self) -> bool:
        """Whether the search network's pooling ops end in a BatchNorm."""
        return False

    @abstractmethod
    def search_layers(self, dag: SearchDag, *, C: int, layers: int, num_classes: int, in_channels: int,
                      stem_multiplier: int | None) -> dict[str, nn.Module]:
        """The search network's layers by name, in the order they are built, with ``dag`` building each searched
        cell; the supernet holds them as its own (nas.searching.supernet)."""

    @abstractmethod
    def search_forward(self, net: Any, x: torch.Tensor, mixings: dict[str, Any]) -> torch.Tensor:
        """The search network's logits: ``net`` holds the layers of search_layers, ``mixings`` one mixing per cell
        type of this forward pass."""

    # ------------------------------------------------------------------------------------------ costs

    @abstractmethod
    def cover_genotypes(self, op: str) -> list[Genotype]:
        """Genotypes that hold ``op`` on every edge between them."""

    @abstractmethod
    def cost_slots(self, net: nn.Module, g: Genotype) -> list[CostSlot]:
        """(module name, cell type, edge, op) of every searched op of ``net``, the network built from ``g``."""

    def cell_slots(self, prefix: str, cell_type: str, g: Genotype) -> list[CostSlot]:
        """The slots of one cell of ``g`` whose ops are the modules ``prefix``.0, .1, ... in the genotype's edge
        order (none where the space searches no such cell)."""
        cells = g.cells()
        if cell_type not in cells or cell_type not in self.cell_types:
            return []
        edges = [(self.edges.index((src, node_id)), self.ops.index(op))
                 for node_id, node in zip(self.nodes, cells[cell_type][0], strict=True) for op, src in node]
        return [(f"{prefix}.{j}", cell_type, e, k) for j, (e, k) in enumerate(edges)]


# ---------------------------------------------------------------------------------------------- registry

_SPACES: dict[str, Space] = {}


def register_space(space: Space) -> Space:
    """Make ``space`` available by its name (model.space, a genotype's "space"); a name already registered is
    refused."""
    if space.name in _SPACES:
        raise ValueError(f"a space named {space.name!r} is already registered; registered: {', '.join(_SPACES)}")
    _SPACES[space.name] = space
    return space


def list_spaces() -> list[str]:
    return list(_SPACES)


def check_space_name(name: str, key: str = "model.space") -> None:
    """Raise a one-line UserError, naming ``key``, for a name that is not a registered space."""
    if name not in _SPACES:
        near = difflib.get_close_matches(str(name), list(_SPACES), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"{key}={name!r} is not valid{hint}; valid: {', '.join(_SPACES)}")


def get_space(name: str) -> Space:
    """The registered space ``name``, as a search runs it by default."""
    if name not in _SPACES:
        raise UserError(f"unknown search space {name!r}; valid: {', '.join(_SPACES)}")
    return _SPACES[name]


def search_space(name: str, ops: tuple[str, ...] | None = None, macro: str | None = None) -> Space:
    """The space a search runs in (model.space, model.ops, model.macro)."""
    return get_space(name).searching(ops, macro)


def spaces_where(fact: Callable[[Space], bool]) -> str:
    """The names of the spaces of which ``fact`` holds, for messages: "nb201", "darts, nb201"."""
    return ", ".join(name for name, space in _SPACES.items() if fact(space))
