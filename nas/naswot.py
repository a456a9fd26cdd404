"""The training-free score of NASWOT (Mellor et al., "Neural architecture search without training", ICML 2021,
Sec. 3): for a batch of N images, every ReLU of the network gives each image a binary code (which units are
active); K[i, j] = sum over ReLUs of the number of units on which images i and j agree, and the score is
log|det K|. A network whose ReLUs tell the images of a batch apart scores high, and it is computed at
initialisation, with no training.

A cell is scored in a freshly initialised supernet, running that cell alone through the supernet's op mask: the
same network a discrete build of the cell would be, with the supernet's C and layers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from nas.genotype import Genotype, derive, random_genotype
from nas.mixing import create_mixer, gumbel_like
from nas.perturb import masks_of
from nas.supernet import Supernet


def relu_kernel(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None
                ) -> torch.Tensor:
    """K (N, N) float64 for the batch x (N, ...): K[i, j] = sum over the ReLUs that ran of the number of units where
    images i and j are both active or both inactive (the input of the ReLU > 0, or not)."""
    K = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        c = (inputs[0].detach().flatten(1) > 0).to(torch.float64)  # (N, units) binary codes
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            (forward or model)(x)
    finally:
        for h in handles:
            h.remove()
    return K


def naswot(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None) -> float:
    """log|det K| of relu_kernel: NASWOT's score of ``model`` on the batch ``x`` (higher is better)."""
    return float(torch.linalg.slogdet(relu_kernel(model, x, forward))[1])


@contextmanager
def running(model: Supernet, genotype: Genotype) -> Iterator[None]:
    """The supernet running ``genotype`` alone: one allowed op per edge, sampled with certainty."""
    saved = model.mixer, model.op_mask
    model.mixer = create_mixer("random")  # uniform among the allowed ops: the one op of each edge
    model.op_mask = masks_of(model.space, genotype, model.alpha[model.space.cell_types[0]].device)
    try:
        yield
    finally:
        model.mixer, model.op_mask = saved


def score_cells(model: Supernet, cells: list[Genotype], x: torch.Tensor,
                say: Callable[[str], None] | None = None) -> list[float]:
    """NASWOT's score of each cell, run alone in ``model`` (which should be freshly initialised) on the batch x;
    with ``say``, a progress line at every tenth of the cells."""
    model.set_step("none")
    scores = []
    start, every = time.perf_counter(), max(1, len(cells) // 10)
    for i, g in enumerate(cells, start=1):
        with running(model, g):
            scores.append(naswot(model, x))
        if say is not None and (i % every == 0 or i == len(cells)) and i < len(cells):
            took = time.perf_counter() - start
            say(f"  {i}/{len(cells)} cells scored, {took:.0f}s, about {took / i * (len(cells) - i):.0f}s to go")
    return scores


def cells_from_alpha(model: Supernet, samples: int, seed: int, rule: str = "darts",
                     keep: Callable[[Genotype], bool] | None = None) -> list[Genotype]:
    """Up to ``samples`` distinct cells drawn from alpha: first the one alpha derives, then the cells derived from
    alpha + Gumbel noise (the Gumbel-max trick: in NAS-Bench-201, each edge's op an exact sample of softmax(alpha);
    in the DARTS space, samples that keep the derivation rule's constraints). The draws are bounded: a peaked
    alpha may give fewer distinct cells. With ``keep`` (a budget's test), only the cells it keeps count."""
    alphas = {t: a.detach().cpu() for t, a in model.alpha.items()}
    g = torch.Generator().manual_seed(seed)
    first = derive(model.space, alphas, rule)
    found = {str(first): first} if keep is None or keep(first) else {}
    for _ in range(20 * samples):
        if len(found) >= samples:
            break
        cell = derive(model.space, {t: a + gumbel_like(a, g) for t, a in alphas.items()}, rule)
        if keep is None or keep(cell):
            found.setdefault(str(cell), cell)
    return list(found.values())


def random_cells(space: Any, seed: int, samples: int, keep: Callable[[Genotype], bool] | None = None
                 ) -> list[Genotype]:
    """``samples`` random cells (under the darts rule's constraints, seeded by ``seed``); with ``keep``, only those it
    keeps, drawing at most 50 times as many."""
    rng = random.Random(seed)
    if keep is None:
        return [random_genotype(space, rng, "darts") for _ in range(samples)]
    out: list[Genotype] = []
    for _ in range(50 * samples):
        if len(out) == samples:
            break
        g = random_genotype(space, rng, "darts")
        if keep(g):
            out.append(g)
    return out


def select_by_naswot(model: Supernet, x: torch.Tensor, seed: int, samples: int,
                     say: Callable[[str], None] = print, pool: list[Genotype] | None = None) -> Genotype:
    """The best by NASWOT of ``pool``, or of ``samples`` random cells (drawn under the darts rule's constraints,
    seeded by ``seed``), scored in ``model`` on the batch x."""
    cells = pool if pool is not None else random_cells(model.space, seed, samples)
    say(f"scoring {len(cells)} {'cells' if pool is not None else 'random cells'} by NASWOT (log|det K| of the ReLU "
        f"codes) at initialisation, on one batch of {len(x)} images")
    scores = score_cells(model, cells, x, say)
    order = sorted(range(len(cells)), key=lambda i: (-scores[i], i))  # the best score; on a tie, the first drawn
    for i in order[:3]:
        say(f"  cell {i + 1}/{len(cells)}: {scores[i]:.2f}  {cells[i]}")
    say(f"  median of the {len(cells)} scores: {sorted(scores)[len(scores) // 2]:.2f}")
    return cells[order[0]]


def op_prior(model: Supernet, x: torch.Tensor, seed: int, samples: int,
             say: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """NASWOT as a prior on alpha: score ``samples`` random cells in ``model`` (freshly initialised) on the batch x,
    standardise the scores, and give each (edge, op) of each cell type the mean standardised score of the cells
    that hold that op on that edge (0 where none does). Returns one (E, K) tensor per cell type."""
    rng = random.Random(seed)
    cells = [random_genotype(model.space, rng, "darts") for _ in range(samples)]
    say(f"NASWOT prior: scoring {samples} random cells at initialisation on {len(x)} images")
    with torch.random.fork_rng(devices=[]):  # scoring must not move the stream the search draws from next
        scores = torch.tensor(score_cells(model, cells, x, say), dtype=torch.float64)
    finite = scores.isfinite()  # a singular K (a cell whose output is constant) scores -inf: the lowest there is
    if not finite.any():
        raise ValueError("every cell's NASWOT kernel is singular: the batch cannot tell its images apart")
    scores = torch.where(finite, scores, scores[finite].min())
    z = (scores - scores.mean()) / scores.std().clamp_min(1e-12)
    space = model.space
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
    best = int(z.argmax())
    say(f"NASWOT prior: best score {float(scores[best]):.2f}, median {float(scores.median()):.2f}; per edge, the op "
        "whose cells score highest: "
        + " ".join(f"{t}: " + ",".join(space.ops[int(k)] for k in p.argmax(-1)) for t, p in prior.items()))
    return prior
