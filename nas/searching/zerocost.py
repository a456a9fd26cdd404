"""Cells scored without training: each cell built as the network it stands for, freshly initialised from one seed, and
scored by the zero-cost scores of nas/searching/scores.py on one batch of the user's images; several scores combined by
rank aggregation (the log-rank sum of AZ-NAS, Lee & Ham, CVPR 2024, Eq. 11, or a Copeland vote, the majority vote of
Abdelfattah et al., ICLR 2021, Sec. 5, generalised to many cells). The cells come from the space at random or from alpha
(the Gumbel-max trick); scores of random cells also give a per-op prior on alpha (each op's mean standardised score on
each edge). Rank correlations for the benchmarks."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nas.errors import UserError
from nas.searching.mixing import gumbel_like
from nas.searching.scores import Batch, check_score_name, get_score
from nas.space.derivation import derive, masks_of, random_genotype
from nas.space.genotype import Genotype
from nas.space.network import build_network
from nas.text import count

ENSEMBLES = ("logrank", "vote")


def scoring_network(genotype: Genotype, *, C: int, layers: int, num_classes: int, in_channels: int = 3,
                    seed: int = 0) -> nn.Module:
    """The network ``genotype`` stands for, at C channels and ``layers`` cells (per stage in NAS-Bench-201), with
    the weights a fresh init from ``seed`` gives, in training mode; torch's global stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(genotype, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels).train()


def score_cells(cells: Sequence[Genotype], names: Sequence[str], batch: Batch, *, C: int, layers: int,
                num_classes: int, seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
                say: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Every score of ``names`` for each cell, each cell's network built by scoring_network on the batch's device;
    with ``say``, a progress line at every tenth of the cells."""
    for name in names:
        check_score_name(name)
    x, y = batch
    out: dict[str, list[float]] = {name: [] for name in names}
    start, every = time.perf_counter(), max(1, len(cells) // 10)
    for i, g in enumerate(cells, start=1):
        net = scoring_network(g, C=C, layers=layers, num_classes=num_classes, in_channels=x.shape[1], seed=seed)
        net = net.to(x.device).to(memory_format=memory_format)
        for name in names:
            out[name].append(get_score(name)(net, (x, y)))
        if say is not None and i % every == 0 and i < len(cells):
            took = time.perf_counter() - start
            say(f"  {i}/{len(cells)} cells scored, {took:.0f}s, about {took / i * (len(cells) - i):.0f}s to go")
    return out


def combine(scores: Mapping[str, Sequence[float]], ensemble: str = "logrank") -> list[float]:
    """One value per cell: the score itself when there is one, else the ``ensemble`` of them (see aggregate)."""
    if len(scores) == 1:
        return list(next(iter(scores.values())))
    return aggregate(scores, ensemble)


def describe_scores(names: Sequence[str], ensemble: str) -> str:
    """The scores in words: "naswot", or "naswot + synflow (log-rank sum)"."""
    if len(names) == 1:
        return names[0]
    return " + ".join(names) + (" (log-rank sum)" if ensemble == "logrank" else " (majority vote)")


def rank_cells(cells: Sequence[Genotype], names: Sequence[str], ensemble: str, batch: Batch, *, C: int, layers: int,
               num_classes: int, seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
               say: Callable[[str], None] = print, what: str = "cells") -> list[tuple[Genotype, float]]:
    """``cells`` scored (score_cells) and combined (combine), best first; on a tie, the cell drawn first."""
    say(f"scoring {len(cells)} {what} by {describe_scores(names, ensemble)} at initialisation (C={C}, "
        f"{count(layers, 'cell')} per stage), on one batch of {len(batch[0])} images")
    values = combine(score_cells(cells, names, batch, C=C, layers=layers, num_classes=num_classes, seed=seed,
                                 memory_format=memory_format, say=say), ensemble)
    order = sorted(range(len(cells)), key=lambda i: (-values[i], i))
    for i in order[:3]:
        say(f"  cell {i + 1}/{len(cells)}: {values[i]:.2f}  {cells[i]}")
    say(f"  median of the {len(cells)} values: {sorted(values)[len(values) // 2]:.2f}")
    return [(cells[i], values[i]) for i in order]


# ---------------------------------------------------------------------------------------------- where cells come from

def random_cells(space: Any, seed: int, samples: int, keep: Callable[[Genotype], bool] | None = None
                 ) -> list[Genotype]:
    """``samples`` distinct random cells (drawn uniformly under the darts rule's constraints, seeded by ``seed``, a
    cell drawn again skipped); with ``keep``, only those it keeps. The draws are bounded (50 times ``samples``): a
    space, or a budget, with fewer such cells gives fewer."""
    rng = random.Random(seed)
    found: dict[str, Genotype] = {}
    for _ in range(50 * samples):
        if len(found) == samples:
            break
        g = random_genotype(space, rng, rule="darts")
        if str(g) not in found and (keep is None or keep(g)):
            found[str(g)] = g
    return list(found.values())


def cells_from_alpha(space: Any, alpha: dict[str, torch.Tensor], samples: int, seed: int, rule: str = "darts",
                     keep: Callable[[Genotype], bool] | None = None) -> list[Genotype]:
    """Up to ``samples`` distinct cells drawn from alpha: first the one alpha derives, then the cells derived from
    alpha + Gumbel noise (the Gumbel-max trick: in NAS-Bench-201, each edge's op an exact sample of softmax(alpha);
    in the DARTS space, samples that keep the derivation rule's constraints). The draws are bounded: a peaked
    alpha may give fewer distinct cells. With ``keep`` (a budget's test), only the cells it keeps count."""
    alphas = {t: a.detach().cpu() for t, a in alpha.items()}
    g = torch.Generator().manual_seed(seed)
    first = derive(space, alphas, rule)
    found = {str(first): first} if keep is None or keep(first) else {}
    for _ in range(20 * samples):
        if len(found) >= samples:
            break
        cell = derive(space, {t: a + gumbel_like(a, g) for t, a in alphas.items()}, rule)
        if keep is None or keep(cell):
            found.setdefault(str(cell), cell)
    return list(found.values())


def op_prior(space: Any, cells: Sequence[Genotype], values: Sequence[float]) -> dict[str, torch.Tensor]:
    """A prior on alpha from scored random cells: standardise the values (a -inf, a cell that passes nothing on,
    counts as the lowest finite one) and give each (edge, op) of each cell type the mean standardised value of the
    cells that hold that op on that edge (0 where none does). One (E, K) tensor per cell type."""
    v = torch.tensor(values, dtype=torch.float64)
    finite = v.isfinite()
    if not finite.any():
        raise UserError("every cell scored -inf: the scoring batch cannot tell its images apart; valid: a larger "
                        "search.score_batch, or other search.score")
    v = torch.where(finite, v, v[finite].min())
    z = (v - v.mean()) / v.std().clamp_min(1e-12)
    prior = {}
    for t in space.cell_types:
        total = torch.zeros(space.num_edges, space.num_ops, dtype=torch.float64)
        count = torch.zeros_like(total)
        for g, zi in zip(cells, z, strict=True):
            mask = masks_of(space, g)[t]
            used = mask.sum(-1) == 1  # the edges this cell keeps (DARTS space: `none` alone marks a dropped edge)
            total[used] += zi * mask[used]
            count[used] += mask[used].to(torch.float64)
        prior[t] = (total / count.clamp_min(1)).to(torch.float32)
    return prior


# ---------------------------------------------------------------------------------------------- ranks

def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending (the highest value has rank n), ties sharing their mean rank; NaN ranks lowest."""
    v = [-math.inf if math.isnan(a) else a for a in values]
    order = sorted(range(len(v)), key=v.__getitem__)
    out = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def aggregate(scores: Mapping[str, Sequence[float]], rule: str = "logrank") -> list[float]:
    """One combined score per cell from several scores of the same cells (higher is better). logrank: the sum over
    scores of log(rank / n); vote: the number of other cells this one beats on a majority of the scores."""
    if rule not in ENSEMBLES:
        raise ValueError(f"unknown ensemble rule {rule!r}; valid: {', '.join(ENSEMBLES)}")
    columns = [ranks(v) for v in scores.values()]
    n = len(columns[0])
    if rule == "logrank":
        return [sum(math.log(col[i] / n) for col in columns) for i in range(n)]
    R = torch.tensor(columns, dtype=torch.float64)  # (scores, cells)
    wins = (R[:, :, None] > R[:, None, :]).sum(0)  # (cells, cells): scores on which i beats j
    losses = (R[:, :, None] < R[:, None, :]).sum(0)
    return [float(v) for v in (wins > losses).sum(1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties at their mean rank)."""
    ra, rb = torch.tensor(ranks(a), dtype=torch.float64), torch.tensor(ranks(b), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float(ra @ rb) / den if den else math.nan


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) pairs over the pairs that are not tied, with the ties correction."""
    x = torch.tensor([-math.inf if math.isnan(v) else v for v in a], dtype=torch.float64)
    y = torch.tensor([-math.inf if math.isnan(v) else v for v in b], dtype=torch.float64)
    dx = torch.sign(x[:, None] - x[None, :]).nan_to_num(0.0)  # (n, n); -inf - -inf is a tie
    dy = torch.sign(y[:, None] - y[None, :]).nan_to_num(0.0)
    num = float((dx * dy).sum())
    den = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return num / den if den else math.nan
