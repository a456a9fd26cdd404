"""Selection by perturbation (Wang et al., ICLR 2021, "Rethinking architecture selection in differentiable NAS",
Alg. 1 and 2): an op's strength is how much the supernet's validation accuracy drops when the op is taken off its
edge, not the size of its alpha. Zero-Cost-PT (Xiang et al., AutoML 2023, Alg. 1) measures the drop by zero-cost
scores of the supernet on one batch instead, with every op mixed and the supernet untrained or as the search left
it.

Edges are decided one at a time, in a seeded random order. Each edge keeps the op whose removal lowers the
accuracy most, and from then on the supernet runs with that edge fixed to it. In the DARTS space, each node then
keeps the two input edges whose removal lowers the accuracy most. The supernet runs in training mode (batch
statistics), as in the paper's code. Unlike the paper, it is not fine-tuned between decisions, which would cost
epochs: the selection reads the supernet as the search left it.

``select_by_sampling`` is random search with weight sharing's selection (Li & Talwalkar, UAI 2019): random cells,
each run alone in the supernet through its op mask, scored on the alpha half; the best is the genotype.

Removing an op goes through the supernet's op mask. The DARTS mixture gives the op weight 0 and leaves the other
weights as they are; GDAS stops sampling the op. A decided edge runs its one op with weight 1. Several zero-cost
scores decide by the rank of their values among an edge's candidates (nas.searching.zerocost.combine).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nas.data.pipeline import Batches
from nas.searching.supernet import Supernet
from nas.searching.zerocost import random_cells
from nas.space.derivation import genotype_of, masks_of
from nas.space.genotype import Genotype
from nas.space.spaces import Space


@torch.no_grad()
def accuracy(model: Supernet, batches: Batches, seed: int, amp: Any,
             memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Top-1 accuracy (%) of the supernet as its op mask stands, over every image of ``batches``; the mixer's samples
    (GDAS's Gumbel noise, SNAS's, DrNAS's Dirichlet draws) come from a generator seeded by ``seed`` each time, so
    that candidates are compared on the same noise. The supernet's own generator is left as it was."""
    correct = torch.zeros((), device=batches.device)
    saved = model.generator
    model.generator = torch.Generator(device=batches.device).manual_seed(seed)  # what Supernet.mixings draws from
    try:
        for x, y in batches.epoch(0):
            with amp:
                logits = model(x.contiguous(memory_format=memory_format))
            correct += (logits.argmax(1) == y).sum()
    finally:
        model.generator = saved
    return 100 * float(correct) / batches.num_images


@dataclass
class Measure:
    """What perturbation measures the supernet by, as its op mask stands: ``fn`` returns one value per score (higher
    is better), and the values of several candidates combine by ``ensemble`` (nas.searching.zerocost.combine)."""

    what: str
    fn: Callable[[], dict[str, float]]
    ensemble: str = "logrank"
    unit: str = ""

    def of(self, candidates: list[dict[str, float]]) -> list[float]:
        from nas.searching.zerocost import combine

        return combine({k: [c[k] for c in candidates] for k in candidates[0]}, self.ensemble)


def supernet_accuracy(model: Supernet, batches: Batches, seed: int, amp: Any,
                      memory_format: torch.memory_format = torch.contiguous_format) -> Measure:
    """The supernet's accuracy on ``batches`` (Wang et al.'s measure)."""
    return Measure(f"accuracy on {batches.num_images} images", lambda: {"accuracy": accuracy(
        model, batches, seed, amp, memory_format)}, unit="%")


def supernet_score(model: Supernet, names: Sequence[str], ensemble: str,
                   batch: tuple[torch.Tensor, torch.Tensor]) -> Measure:
    """Zero-cost scores of the supernet (Zero-Cost-PT, Xiang et al. 2023): every allowed op of an edge mixed by
    softmax(alpha) over the allowed ops (DARTS's mixing, whatever the search's mixer: no sample, no noise), the
    weights taking gradients, on one batch."""
    from nas.searching.mixing import create_mixer
    from nas.searching.scores import get_score
    from nas.searching.zerocost import describe_scores

    def fn() -> dict[str, float]:
        saved = model.mixer
        model.mixer = create_mixer("darts")
        model.set_step("weights")
        try:
            return {name: get_score(name)(model, batch) for name in names}
        finally:
            model.mixer = saved
            model.set_step("none")

    return Measure(f"{describe_scores(names, ensemble)} on {len(batch[0])} images", fn, ensemble)


def select_by_perturbation(model: Supernet, measure: Measure, seed: int,
                           say: Callable[[str], None] = print) -> Genotype:
    """The genotype chosen by perturbation (see the module's docstring), measured by ``measure``. Leaves the
    supernet's op mask as it found it (none)."""
    space = model.space
    device = model.alpha[space.cell_types[0]].device
    masks = {t: torch.ones(space.num_edges, space.num_ops, dtype=torch.bool, device=device) for t in space.cell_types}
    # the ops a kept edge may hold (DARTS-space cells never keep `none`; NAS-Bench-201 keeps whatever the edge needs)
    candidates = [k for k, op in enumerate(space.ops) if op in space.kept_ops]
    u = measure.unit

    def whole() -> str:
        values = measure.fn()
        return ", ".join(f"{v:.2f}{u}" for v in values.values())

    model.set_step("none")
    model.op_mask = masks
    try:
        say(f"selecting by perturbation: {space.num_edges * len(space.cell_types)} edges x {len(candidates)} ops, "
            f"each measured by the supernet's {measure.what}; the whole supernet: {whole()}")
        order = [(t, e) for t in space.cell_types for e in range(space.num_edges)]
        random.Random(seed).shuffle(order)
        for t, e in order:
            results = []
            for k in candidates:
                masks[t][e, k] = False
                results.append(measure.fn())
                masks[t][e, k] = True
            without = dict(zip(candidates, measure.of(results), strict=True))
            weight = model.alpha[t][e].detach()  # breaks ties (common on small data): the larger alpha wins
            keep = min(candidates, key=lambda k: (without[k], -float(weight[k])))  # the op whose removal hurts most
            masks[t][e] = one_op(space, keep, device)
            src, dst = space.edges[e]
            say(f"  {t} edge {src}->{dst}: {space.ops[keep]} (without it {without[keep]:.2f}{u}, without the "
                f"others {min(v for k, v in without.items() if k != keep):.2f}{u} or more)")
        if space.kept_inputs is not None:  # a node keeps some of its inputs (DARTS space: 2)
            keep_inputs(space, masks, measure, space.kept_inputs)
        say(f"  the supernet with every edge decided: {whole()}")
    finally:
        model.op_mask = None
    return genotype_of(space, {t: m.cpu() for t, m in masks.items()})


def one_op(space: Space, k: int, device: torch.device) -> torch.Tensor:
    """(K,) the mask row that allows op k alone."""
    row = torch.zeros(space.num_ops, dtype=torch.bool, device=device)
    row[k] = True
    return row


def keep_inputs(space: Space, masks: dict[str, torch.Tensor], measure: Measure, kept: int) -> None:
    """Per node, keep the ``kept`` input edges whose removal (`none` alone on the edge) lowers the measure most; the
    others get `none` alone."""
    for t in space.cell_types:
        dropped = one_op(space, space.ops.index("none"), masks[t].device)
        for node in space.nodes:
            ids = space.edges_into(node)
            results = []
            for e in ids:
                decided = masks[t][e].clone()
                masks[t][e] = dropped
                results.append(measure.fn())
                masks[t][e] = decided
            without = dict(zip(ids, measure.of(results), strict=True))
            for e in sorted(ids, key=lambda e: without[e])[kept:]:  # all but the most needed
                masks[t][e] = dropped


def select_by_sampling(model: Supernet, batches: Batches, seed: int, samples: int, amp: Any,
                       memory_format: torch.memory_format = torch.contiguous_format,
                       say: Callable[[str], None] = print) -> list[Genotype]:
    """``samples`` distinct random cells (drawn under the darts rule's constraints, seeded by ``seed``), each run
    alone in the supernet and scored on ``batches``, the best first (on a tie, the cell drawn first). Leaves the
    supernet's op mask as it found it (none)."""
    space = model.space
    device = model.alpha[space.cell_types[0]].device
    model.set_step("none")
    scored: list[tuple[float, int, Genotype]] = []
    cells = random_cells(space, seed, samples)
    try:
        say(f"scoring {len(cells)} random cells with the supernet's weights, each on {batches.num_images} images")
        for i, genotype in enumerate(cells):
            model.op_mask = masks_of(space, genotype, device)
            scored.append((accuracy(model, batches, seed, amp, memory_format), -i, genotype))
    finally:
        model.op_mask = None
    scored.sort(key=lambda t: t[:2], reverse=True)  # the best accuracy; on a tie, the cell drawn first
    for acc, i, genotype in scored[:3]:
        say(f"  cell {-i + 1}/{len(cells)}: {acc:.2f}%  {genotype}")
    say(f"  median of the {len(cells)} cells: {scored[len(scored) // 2][0]:.2f}%")
    return [genotype for _, _, genotype in scored]
