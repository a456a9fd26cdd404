"""Search under a budget (search.budget): a target on what the cell costs (nas/searching/costs.py), the term that the
expected cost adds to the alpha loss, and a derived cell brought under the target.

The alpha loss gains one of two rules on the expected cost E against the target T:
- ``band`` (the default; TAS, Dong & Yang 2019, in AutoDL-Projects): log(E / T) above T, log(T (1 - tolerance) / E)
  below the band, nothing inside it: alpha is pushed only when the cell is out of the band, and not at all once it
  is in, so the validation loss alone chooses among the cells that fit;
- ``log`` (MnasNet's soft objective, Tan et al. 2019, in log form): weight x log(E / T) always: a steady pull
  towards cheaper cells in proportion to their relative cost; the target then binds through derivation only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nas.errors import UserError
from nas.searching.costs import CostModel, count_costs, fmt, latency_table
from nas.space.genotype import Genotype
from nas.space.spaces import get_space, search_space


@dataclass
class Budget:
    """search.budget as the search applies it: the cost model, the target and the loss rule."""

    cost: CostModel
    target: float
    tolerance: float = 0.1
    rule: str = "band"
    weight: float = 1.0

    @property
    def metric(self) -> str:
        return self.cost.metric

    def loss(self, expected: torch.Tensor) -> torch.Tensor:
        """The alpha loss's budget term at expected cost ``expected`` (see the module docstring)."""
        log_ratio = torch.log(expected.clamp_min(1e-12) / self.target)
        if self.rule == "log":
            return self.weight * log_ratio
        # above the target, log(E / T); below the band, log(T (1 - tolerance) / E); inside it 0 (no host sync)
        below = math.log(1.0 - self.tolerance) - log_ratio
        return self.weight * (torch.relu(log_ratio) + torch.relu(below))

    def fits(self, genotype: Genotype) -> bool:
        return self.cost.of(genotype) <= self.target * (1 + 1e-9)

    def describe(self) -> str:
        rule = (f"band rule, tolerance {self.tolerance:g}" if self.rule == "band" else "log rule")
        return (f"budget: {fmt(self.target, self.metric)} ({rule}, weight {self.weight:g}); cells cost "
                f"{fmt(self.cost.extreme(min), self.metric)} to {fmt(self.cost.extreme(max), self.metric)} in the "
                f"network of C={self.cost.network['C']}, layers={self.cost.network['layers']}, "
                f"{self.cost.network['image_size']}px images")

    def check(self, where: str = "search.budget.target") -> None:
        """Refuse a target below the cheapest cell (nothing could fit) or above the dearest (every cell fits: the
        budget would change nothing)."""
        low, high = self.cost.extreme(min), self.cost.extreme(max)
        if self.target < low:
            raise UserError(f"{where}={self.target:g} is below the cheapest cell, {fmt(low, self.metric)} (the network "
                            f"outside the cells costs {fmt(self.cost.base, self.metric)}); valid: "
                            f"{low:.4g} to {high:.4g}")
        if self.target > high:
            raise UserError(f"{where}={self.target:g} is above the dearest cell, {fmt(high, self.metric)}: every cell "
                            f"fits and the budget would change nothing; valid: {low:.4g} to {high:.4g} (or "
                            "search.budget.metric=off)")

    def repair(self, genotype: Genotype, alphas: dict[str, torch.Tensor]) -> tuple[Genotype, list[str]]:
        """``genotype`` brought under the target: while it costs more, the op of one kept edge is replaced by a
        cheaper one: the replacement that gives up the least alpha (log-softmax) among those that bring the cell
        within the budget, or, when no single one does, the one that gives up the least per unit of cost saved.
        Returns the cell and one line per replacement (none when it fits already)."""
        space, cost = self.cost.space, self.cost
        cells = {t: [list(node) for node in nodes] for t, (nodes, _) in genotype.cells().items() if t in cost.table}
        logp = {t: a.detach().double().cpu().log_softmax(-1) for t, a in alphas.items()}
        real = cost.kept_columns()
        changes: list[str] = []

        def current() -> Genotype:
            out = {t: tuple(tuple(node) for node in nodes) for t, nodes in cells.items()}
            return dataclasses.replace(genotype, normal=out.get("normal", genotype.normal),
                                       reduce=out.get("reduce", genotype.reduce))

        g = genotype
        while (over := cost.of(g) - self.target * (1 + 1e-9)) > 0:
            best: tuple[float, str, int, int, int] | None = None
            closing: tuple[float, str, int, int, int] | None = None
            for t, nodes in cells.items():
                for n, (node_id, node) in enumerate(zip(space.nodes, nodes, strict=True)):
                    for i, (op, src) in enumerate(node):
                        e, cur = space.edges.index((src, node_id)), space.ops.index(op)
                        for k in real:
                            saving = float(cost.table[t][e, cur] - cost.table[t][e, k])
                            if saving <= 0:
                                continue
                            drop = float(logp[t][e, cur] - logp[t][e, k])
                            if best is None or drop / saving < best[0]:
                                best = (drop / saving, t, n, i, k)
                            if saving >= over and (closing is None or drop < closing[0]):
                                closing = (drop, t, n, i, k)
            if best is None:
                break  # nothing cheaper on any kept edge
            _, t, n, i, k = closing or best
            op, src = cells[t][n][i]
            cells[t][n][i] = (space.ops[k], src)
            g = current()
            now = fmt(cost.of(g), self.metric)
            changes.append(f"{t} edge {src}->{space.nodes[n]}: {op} -> {space.ops[k]} (now {now})")
        return g, changes


def budget_network(cfg: Any, classes: int, channels: int, image_size: int) -> dict[str, Any]:
    """The network search.budget counts costs on: its C, layers and image size, from the config (null: the space's
    standard network, NAS-Bench-201's C=16 N=5 or DARTS's C=36 with 20 cells, at the data's image size)."""
    b = cfg.search.budget
    C, layers = get_space(cfg.model.space).budget_network
    return {"C": b.C or C, "layers": b.layers or layers, "classes": classes, "channels": channels,
            "size": b.image_size or image_size}


def make_budget(cfg: Any, classes: int, channels: int, image_size: int, device: torch.device,
                say: Callable[[str], None]) -> Budget | None:
    """search.budget's Budget for a search (None when it is off): parameters and FLOPs counted now, latency read from
    its table (search.budget.latency_table, or the cache for this network and device; timed and cached if absent).
    Checked: a target below the cheapest cell is refused."""
    b = cfg.search.budget
    if b.metric == "off":
        return None
    space = search_space(cfg.model.space, cfg.model.ops, cfg.model.macro)
    net = budget_network(cfg, classes, channels, image_size)
    if b.metric != "latency":
        cost = count_costs(b.metric, space, device=torch.device("cpu"), **net)
    else:
        cost = latency_table(space, net, device, b.latency_batch, b.latency_table or None, say)
    budget = Budget(cost, b.target, b.tolerance, b.rule, b.weight)
    budget.check()
    return budget
