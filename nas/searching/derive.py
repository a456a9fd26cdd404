"""What a search makes of its supernet and the user's images, apart from its loop: the zero-cost prior that alpha
starts from (search.prior), the genotype by the search.derive rule (the registry of nas/searching/rules.py: alpha's
argmax; the best of cells ranked by zero-cost scores or by the trained supernet; perturbation selection, Wang et al.,
ICLR 2021, and Zero-Cost-PT, Xiang et al. 2023) with the final stage of short-listed cells trained alone, and the cell
fitted to the budget (search.budget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nas.data.datasets import ImageSet
from nas.data.pipeline import Batches, SearchData, resize
from nas.searching.budget import fmt
from nas.searching.rules import Context, get_rule
from nas.searching.supernet import Supernet
from nas.space.genotype import Genotype

if TYPE_CHECKING:  # the recipe's schema, read here as a type only: at run time nas.config sits above the search code
    from nas.config import SearchConfig


def derive_genotype(cfg: SearchConfig, model: Supernet, d: SearchData, score_batch: Any, amp: Any,
                    memory_format: torch.memory_format, log: Any) -> tuple[Genotype, dict[str, Any] | None]:
    """The search's result by its search.derive rule (nas/searching/rules.py): alpha's argmax (darts, gdas), the best
    of cells ranked by zero-cost scores at initialisation (score) or by the trained supernet (sample), each op judged
    by how much the supernet's accuracy or score drops without it (perturb), or any registered rule; then, for a rule
    that ranks, with search.final.cells, the short list's final stage. Returns the genotype and, with a final stage,
    its record (final.json)."""
    s, valid = cfg.search, d.valid
    device = valid.device
    rule = get_rule(s.derive)
    mean, std = d.stats
    plain = Batches(ImageSet(valid.images, valid.labels, []), batch_size=cfg.data.batch_size, mean=mean, std=std,
                    device=device, shuffle=False, drop_last=False)  # the alpha half without augmentation
    chosen = rule.choose(Context(cfg, model, d, plain, score_batch, amp, memory_format, log))
    if isinstance(chosen, Genotype):
        return chosen, None
    assert rule.ranks and chosen, f"rule {rule.name!r} returned a ranking it did not declare, or an empty one"
    ranked: list[Genotype] = chosen
    f = s.final
    if not f.cells:
        return ranked[0], None
    from nas.searching.finalists import halving, local_search
    from nas.searching.zerocost import rank_cells

    train_images, pad = d.train.images, 4
    if f.image_size and f.image_size != train_images.shape[-1]:  # smaller (or larger) images, cropped in proportion
        pad = max(1, round(4 * f.image_size / train_images.shape[-1]))
        train_images = resize(train_images, f.image_size)
        plain = Batches(ImageSet(resize(valid.images, f.image_size), valid.labels, []), batch_size=cfg.data.batch_size,
                        mean=mean, std=std, device=device, shuffle=False, drop_last=False)
    train = Batches(ImageSet(train_images, d.train.labels, []), batch_size=cfg.data.batch_size, mean=mean,
                    std=std, device=device, seed=cfg.seed, augment=cfg.data.augment, pad=pad)  # every process: all
    if f.shared_epochs:
        from nas.searching.shortlist import gdas_over_list

        valid_images = plain.images  # the alpha half at the finalists' size, augmented as the search's batches are
        draws = Batches(ImageSet(valid_images, valid.labels, []), batch_size=cfg.data.batch_size, mean=mean, std=std,
                        device=device, seed=cfg.seed + 1, augment=cfg.data.augment, pad=pad)
        winner, shared = gdas_over_list(
            ranked[:f.cells], train, draws, plain, space=model.space, C=f.C or cfg.model.C,
            layers=f.layers or cfg.model.layers, num_classes=d.classes, epochs=f.shared_epochs, rank=f.shared_rank,
            lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay, seed=cfg.seed, memory_format=memory_format,
            say=log.print)
        return winner, {"rank": f"shared-{f.shared_rank}", "cells": shared, "winner": str(winner)}
    judged = plain if f.rank != "tse" else None
    alike = dict(C=f.C or cfg.model.C, layers=f.layers or cfg.model.layers, num_classes=d.classes, epochs=f.epochs,
                 lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay, seed=cfg.seed, inits=f.inits,
                 together=f.together, memory_format=memory_format)  # how every finalist and neighbour trains
    best, finalists = halving(ranked[:f.cells], train, judged, eta=f.eta, rank=f.rank, average=f.average,
                              say=log.print, **alike)
    record: dict[str, Any] = {"rank": f.rank}
    if f.local_rounds:
        record["short_list_winner"] = str(best.genotype)  # the final stage's own pick, before the local search
        fits = model.budget.fits if model.budget is not None else None

        def order(cells: list[Genotype]) -> list[Genotype]:  # the neighbours that fit, best first by the scores
            cells = [g for g in cells if fits is None or fits(g)]
            if not rule.scores or not cells:
                return cells
            return [g for g, _ in rank_cells(cells, s.score, s.ensemble, score_batch(), C=cfg.model.C,
                                             layers=cfg.model.layers, num_classes=d.classes, seed=cfg.seed,
                                             memory_format=memory_format, say=lambda _: None)]

        best, more = local_search(best, finalists, model.space, train, judged, rounds=f.local_rounds,
                                  size=f.local_size, rank=f.rank, average=f.average, order=order, say=log.print,
                                  **alike)
        finalists += more
    return best.genotype, {**record, "cells": [g.record() for g in finalists], "winner": str(best.genotype)}




def set_prior(cfg: SearchConfig, model: Supernet, batch: tuple[torch.Tensor, torch.Tensor], classes: int,
              memory_format: torch.memory_format, log: Any) -> None:
    """alpha = search.prior x the per-op prior of search.prior_samples random cells scored by search.score."""
    from nas.searching.zerocost import combine, op_prior, random_cells, score_cells

    s = cfg.search
    cells = random_cells(model.space, cfg.seed, s.prior_samples)
    log.print(f"prior: scoring {len(cells)} random cells by {', '.join(s.score)} at initialisation, on one batch of "
              f"{len(batch[0])} images")
    scores = score_cells(cells, s.score, batch, C=cfg.model.C, layers=cfg.model.layers, num_classes=classes,
                         seed=cfg.seed, memory_format=memory_format, say=log.print)
    prior = op_prior(model.space, cells, combine(scores, s.ensemble))
    with torch.no_grad():
        for t, p in prior.items():
            model.alpha[t].copy_(s.prior * p.to(model.alpha[t].device))
    log.print("prior: per edge, the op whose cells score highest: " + " ".join(
        f"{t}: " + ",".join(model.space.ops[int(k)] for k in p.argmax(-1)) for t, p in prior.items()))


def fit_budget(model: Supernet, genotype: Genotype, log: Any) -> tuple[Genotype, dict[str, Any]]:
    """The derived cell under the budget (model.budget): as it is when it fits, else repaired (Budget.repair), each
    replacement said; returns it and the record of budget.json."""
    budget = model.budget
    before = budget.cost.of(genotype)
    fixed, changes = budget.repair(genotype, {t: a.detach() for t, a in model.alpha.items()})
    after = budget.cost.of(fixed)
    target = fmt(budget.target, budget.metric)
    if changes:
        log.print(f"the derived cell costs {fmt(before, budget.metric)}, over the budget of {target}; repaired:")
        for line in changes:
            log.print(f"  {line}")
    fits = budget.fits(fixed)
    log.print(f"cost of the cell: {fmt(after, budget.metric)} ({'within' if fits else 'OVER'} the budget of {target})"
              + ("" if fits else ": no cheaper op is left on its kept edges"))
    record = {"metric": budget.metric, "target": budget.target, "rule": budget.rule, "cost": after,
              "derived_cost": before, "within": fits, "repaired": changes,
              "expected_cost": float(budget.cost.expected(model.cost_weights(sampled=False)).detach()),
              "network": budget.cost.network, "base": budget.cost.base}
    return fixed, record
