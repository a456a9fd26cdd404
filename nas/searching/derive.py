"""What a search makes of its supernet and the user's images, apart from its loop: the zero-cost prior that alpha
starts from (search.prior), the genotype by the search.derive rule (alpha's argmax; the best of cells ranked by
zero-cost scores or by the trained supernet; perturbation selection, Wang et al., ICLR 2021, and Zero-Cost-PT, Xiang et
al. 2023) with the final stage of short-listed cells trained alone, and the cell fitted to the budget (search.budget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nas.data.datasets import ImageSet
from nas.data.pipeline import Batches, SearchData, resize
from nas.searching.budget import fmt
from nas.searching.supernet import Supernet
from nas.space.derivation import alpha_rule
from nas.space.genotype import Genotype

if TYPE_CHECKING:  # the recipe's schema, read here as a type only: at run time nas.config sits above the search code
    from nas.config import SearchConfig


def derive_genotype(cfg: SearchConfig, model: Supernet, d: SearchData, score_batch: Any, amp: Any,
                    memory_format: torch.memory_format, log: Any) -> tuple[Genotype, dict[str, Any] | None]:
    """The search's result by its search.derive rule: alpha's argmax (darts, gdas), the best of cells ranked by
    zero-cost scores at initialisation (score) or by the trained supernet (sample), or each op judged by how much
    the supernet's accuracy or score drops without it (perturb); then, with search.final.cells, the short list's
    final stage. Returns the genotype and, with a final stage, its record (final.json)."""
    s, valid = cfg.search, d.valid
    device = valid.device
    rule = alpha_rule(s.derive)
    mean, std = d.stats
    plain = Batches(ImageSet(valid.images, valid.labels, []), batch_size=cfg.data.batch_size, mean=mean, std=std,
                    device=device, shuffle=False, drop_last=False)  # the alpha half without augmentation
    ranked: list[Genotype]
    from nas.searching.zerocost import rank_cells

    if s.derive == "score":
        from nas.searching.zerocost import cells_from_alpha, random_cells

        keep = model.budget.fits if model.budget is not None else None  # a budget: only the cells that fit compete
        space = model.space
        pool = (cells_from_alpha(space, dict(model.alpha), s.samples, cfg.seed, rule, keep) if s.pool == "alpha"
                else random_cells(space, cfg.seed, s.samples, keep))
        if not pool:  # none fits: the best of the unfiltered pool is repaired afterwards
            log.print("  no cell drawn fits the budget; the scores choose among all, and the choice is repaired")
            pool = (cells_from_alpha(space, dict(model.alpha), s.samples, cfg.seed, rule) if s.pool == "alpha"
                    else random_cells(space, cfg.seed, s.samples))
        if len(pool) < s.samples:
            log.print(f"  alpha gives {len(pool)} distinct cells of the {s.samples} asked for (search.samples): it "
                      "is peaked on few cells" if s.pool == "alpha" else
                      f"  {len(pool)} of {s.samples} random cells fit the budget")
        ranked = [g for g, _ in rank_cells(pool, s.score, s.ensemble, score_batch(), C=cfg.model.C,
                                           layers=cfg.model.layers, num_classes=d.classes, seed=cfg.seed,
                                           memory_format=memory_format, say=log.print,
                                           what="cells drawn from alpha" if s.pool == "alpha" else "random cells")]
    elif s.derive == "sample":
        from nas.searching.perturb import select_by_sampling

        ranked = select_by_sampling(model, plain, cfg.seed, s.samples, amp, memory_format, log.print)
    elif s.derive == "perturb":
        from nas.searching.perturb import select_by_perturbation, supernet_accuracy, supernet_score

        if s.perturb_by == "score":
            measure = supernet_score(model, s.score, s.ensemble, score_batch())
        else:
            measure = supernet_accuracy(model, plain, cfg.seed, amp, memory_format)
        return select_by_perturbation(model, measure, cfg.seed, log.print), None
    else:
        return model.genotype(rule, s.max_skip), None
    f = s.final
    if not f.cells:
        return ranked[0], None
    from nas.searching.finalists import halving, local_search

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
            if s.derive != "score" or not cells:
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
