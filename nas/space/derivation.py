"""From alpha, masks or chance to a genotype, in any space: the genotype alpha stands for (each space's rule, with
P-DARTS's cap on skip_connects), the genotype of decided op masks and the masks that run a genotype, random cells
and the genotypes one op away.

Each space derives a cell its own way (Space.derive_cell): in the DARTS space, per intermediate node the 2 strongest
distinct input edges, ranked by their best non-`none` softmax weight, each with that best op (Liu et al., ICLR 2019,
Sec. 2.4), or GDAS's rule, the top-2 (op, input) pairs of the node (Dong & Yang, CVPR 2019, Sec. 3.3); in
NAS-Bench-201, the argmax op of every edge, `none` included (Dong & Yang, ICLR 2020).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from nas.errors import UserError
from nas.space.genotype import Genotype, Node, check_genotype
from nas.space.spaces import Space

ALPHA_RULES = ("darts", "gdas")  # the rules that read alpha (search.derive); each space takes some (Space.alpha_rules)


def check_rule(rule: str) -> None:
    if rule not in ALPHA_RULES:
        raise UserError(f"unknown derivation rule {rule!r}; valid: {', '.join(ALPHA_RULES)}")


def derive(space: Space, alphas: dict[str, torch.Tensor], rule: str = "darts",
           max_skip: int | None = None) -> Genotype:
    """The genotype that alpha (logits, one (E, K) matrix per cell type) stands for; with ``max_skip``, its normal
    cell keeps at most that many skip_connect edges (P-DARTS, Chen et al. 2019, Sec. 3.3)."""
    check_rule(rule)
    cells = {t: space.derive_cell(alphas[t].softmax(dim=-1), rule) for t in space.cell_types}
    if max_skip is not None and "skip_connect" in space.ops:
        cells["normal"] = _cap_skips(space, alphas["normal"].softmax(dim=-1), rule, cells["normal"], max_skip)
    return space.genotype(cells)


def alpha_rule(derive: str) -> str:
    """The alpha rule of each epoch's genotype and of pools drawn from alpha: search.derive's own when it reads
    alpha (darts, gdas), else darts (the other rules cost too much to run every epoch)."""
    return derive if derive in ALPHA_RULES else ALPHA_RULES[0]


def _cap_skips(space: Space, w: torch.Tensor, rule: str, nodes: tuple[Node, ...], max_skip: int) -> tuple[Node, ...]:
    """While the cell keeps more than ``max_skip`` skip_connects, take skip_connect off the kept skip edge whose
    weight is smallest and derive again: that edge falls back to its next best op, or loses its place."""
    skip, w = space.ops.index("skip_connect"), w.clone()
    while True:
        kept = [space.edges.index((src, node)) for node, edges in zip(space.nodes, nodes, strict=True)
                for op, src in edges if op == "skip_connect"]
        if len(kept) <= max_skip:
            return nodes
        w[min(kept, key=lambda e: float(w[e, skip])), skip] = 0.0
        nodes = space.derive_cell(w, rule)


def genotype_of(space: Space, masks: dict[str, torch.Tensor]) -> Genotype:
    """The genotype that decided masks (one allowed op per kept edge, `none` on the edges a cell drops) stand for."""
    cells: dict[str, tuple[Node, ...]] = {}
    for t in space.cell_types:
        nodes: list[Node] = []
        for node in space.nodes:
            edges = [(space.ops[int(masks[t][e].nonzero()[0])], space.edges[e][0]) for e in space.edges_into(node)]
            nodes.append(tuple(x for x in edges if x[0] in space.kept_ops))
        cells[t] = tuple(nodes)
    return space.genotype(cells)


def masks_of(space: Any, genotype: Genotype, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The op masks that run exactly ``genotype`` in the supernet: one allowed op per kept edge, and `none` alone on
    the edges the cell does not keep."""
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


def random_genotype(space: Space, rng: random.Random, rule: str = "darts") -> Genotype:
    """A genotype drawn uniformly from those ``rule`` can derive (Space.random_node: NAS-Bench-201, any op on every
    edge, `none` included; DARTS space, per node 2 distinct inputs each with an op other than `none` (rule darts) or
    2 distinct (op, input) pairs (rule gdas))."""
    check_rule(rule)
    cells = {cell: tuple(space.random_node(rng, node, rule) for node in space.nodes) for cell in space.cell_types}
    return check_genotype(space.genotype(cells))


def neighbours(space: Space, g: Genotype) -> list[Genotype]:
    """The genotypes one op away from ``g``: each kept edge of each searched cell with each other op the edge may
    hold (Space.kept_ops: NAS-Bench-201, any op, `none` included; DARTS space, any op but `none`), in edge order,
    then op order."""
    cells = {t: nodes for t, (nodes, _) in g.cells().items()}
    out = []
    for t, nodes in cells.items():
        for i, node in enumerate(nodes):
            for j, (op, src) in enumerate(node):
                for other in space.kept_ops:
                    if other != op:
                        changed = (*node[:j], (other, src), *node[j + 1:])
                        out.append(check_genotype(space.genotype({**cells, t: (*nodes[:i], changed, *nodes[i + 1:])})))
    return out
