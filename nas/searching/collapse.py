"""Collapse into parameter-free cells: measuring it every epoch and warning about it at the end.

A search "collapses" when the cell it derives is made mostly of edges that learn nothing (none, skip_connect,
pooling): the common failure of DARTS (Zela et al., ICLR 2020; Chen et al., P-DARTS, ICCV 2019) and, on small
data sets, of GDAS. It is measured on the normal cell, since the reduction cells of cells that retrain well are
often all pooling (DARTS_V2's is).
"""

from __future__ import annotations

from typing import Any

import torch

from nas.space.genotype import Genotype
from nas.space.ops import is_parameter_free
from nas.text import count

# The warning fires when more than this share of the normal cell's edges is parameter-free: 4 or more of 6 in
# NAS-Bench-201, 6 or more of 8 in the DARTS space. The line sits just above the published cells that retrain
# well: GDAS_F1 (GDAS-FRC, 2.82% CIFAR-10 error) has 5 skip-connects of 8, the other DARTS-space searches' cells at
# most 3 of 8, NASNet-A and AmoebaNet-A 5 and 6 of 10 (a test holds every published cell below it). The collapses it
# is for are far past it: all-skip normal cells (DARTS), pooling and none only (GDAS on small data).
DOMINANT_SHARE = 0.65

REMEDIES = ("search.warmup_epochs (train the weights before alpha moves), search.param_free_dropout (dropout on "
            "parameter-free ops while searching), search.max_skip (cap the skip-connects of the derived cell), "
            "search.derive=perturb (select ops by how much the supernet needs them, not by alpha), or the "
            "small-data recipes configs/search/zc-train-nb201-small.yaml and gdas-darts-small.yaml; docs/collapse.md "
            "says what each did in a measured study")


def edge_stats(genotype: Genotype, alphas: dict[str, torch.Tensor], ops: tuple[str, ...]) -> dict[str, Any]:
    """Per cell type: the derived cell's parameter-free edges and, for alpha, the softmax mass on parameter-free
    ops averaged over the edges. Keys: param_free_edges, param_free_mass (normal cell), and the same with _reduce
    for the reduction cell of the DARTS space."""
    free = torch.tensor([is_parameter_free(op) for op in ops])
    out: dict[str, Any] = {}
    for cell, (nodes, _) in genotype.cells().items():
        suffix = "" if cell == "normal" else f"_{cell}"
        kept = [op for node in nodes for op, _ in node]
        out[f"param_free_edges{suffix}"] = sum(1 for op in kept if is_parameter_free(op))
        out[f"edges{suffix}"] = len(kept)
        mass = alphas[cell].detach().float().softmax(-1)[:, free].sum(-1).mean()  # (E, K) -> mean over edges
        out[f"param_free_mass{suffix}"] = float(mass)
    return out


def describe(stats: dict[str, Any]) -> str:
    """The epoch line's part: 'param-free edges 5/6 (alpha mass 0.62)', with the reduce cell's when there is one."""
    text = f"param-free edges {stats['param_free_edges']}/{stats['edges']} (alpha mass {stats['param_free_mass']:.2f})"
    if "edges_reduce" in stats:
        text += (f", reduce {stats['param_free_edges_reduce']}/{stats['edges_reduce']} "
                 f"({stats['param_free_mass_reduce']:.2f})")
    return text


def normal_free(genotype: Genotype) -> tuple[int, int]:
    """(parameter-free edges, edges) of the genotype's normal cell."""
    kept = [op for node in genotype.normal for op, _ in node]
    return sum(1 for op in kept if is_parameter_free(op)), len(kept)


def dominated(genotype: Genotype) -> bool:
    """Whether more than DOMINANT_SHARE of the normal cell's edges are parameter-free."""
    free, edges = normal_free(genotype)
    return free > DOMINANT_SHARE * edges


WHY = ("The warning fires when more than 65% of a normal cell's edges are none, skip_connect or pooling (4 of 6 in "
       "NAS-Bench-201, 6 of 8 in the DARTS space); the published GDAS_F1 has 5 of 8, the other published cells of "
       "DARTS-space searches at most 3 of 8, and NASNet-A and AmoebaNet-A 5 and 6 of 10. Such a cell is often the "
       "search collapsing (alpha settling on ops that pay off before the weights have learned anything), and it "
       f"tends to retrain below random cells. Remedies: {REMEDIES}.")


def dominance_warning(genotype: Genotype, derived: Genotype | None = None, repaired: int = 0) -> str | None:
    """One short line when the normal cell is dominated by parameter-free edges, else None (the study report
    and docs/collapse.md say more). ``derived`` is the cell before a budget's repair replaced ``repaired`` ops:
    when the repair made it so, the line says the budget did, not a collapse of the search."""
    if not dominated(genotype):
        return None
    if repaired and derived is not None and not dominated(derived):
        return (f"note: the budget's repair left the normal cell mostly parameter-free ({count(repaired, 'op')} "
                "replaced by cheaper ones to fit); a larger search.budget.target keeps more of its convolutions")
    free, edges = normal_free(genotype)
    live = edges - free
    learns = ("none of them learns anything" if live == 0 else
              f"only {live} {'learns' if live == 1 else 'learn'} anything")
    return (f"warning: the normal cell is dominated by parameter-free edges: {free} of its {edges} edges are none, "
            f"skip_connect or pooling, so {learns}; the search may have collapsed (remedies: docs/collapse.md)")
