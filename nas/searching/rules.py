"""How a cell is chosen at the end of a search (search.derive), as a registry: each rule declares its name, the
search.* keys only it reads, what it needs and what it returns, and nas/config.py checks recipes against those
declarations. The built-in rules: alpha's argmax (darts: DARTS, Liu et al., ICLR 2019, Sec. 2.4; gdas: GDAS, Dong &
Yang, CVPR 2019, Sec. 3.3), perturbation selection (Wang et al., ICLR 2021; Zero-Cost-PT, Xiang et al. 2023), the
best of cells sampled in the trained supernet (Li & Talwalkar, UAI 2019) and the best of cells ranked by zero-cost
scores at initialisation (NASWOT, Mellor et al., ICML 2021, and the scores of nas/searching/scores.py).

Light at import (the recipe schemas read it to check names): the rules' work imports what it needs when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from nas.errors import UserError
from nas.text import did_you_mean

if TYPE_CHECKING:  # types only: the rules' modules are imported when a rule runs
    import torch

    from nas.config import SearchConfig
    from nas.data.pipeline import Batches, SearchData
    from nas.searching.supernet import Supernet
    from nas.space.genotype import Genotype


@dataclass(frozen=True)
class Context:
    """What a rule may read when the search has ended: the recipe, the supernet as the search left it, the data's
    two halves, the alpha half without augmentation (``plain``), the batch zero-cost scores read, and how the run
    computes (autocast, memory format) and speaks (log)."""

    cfg: SearchConfig
    model: Supernet
    data: SearchData
    plain: Batches
    score_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    amp: Any
    memory_format: torch.memory_format
    log: Any


Choice: TypeAlias = "Genotype | list[Genotype]"  # the genotype, or a ranking of cells, the best first
ChooseFn: TypeAlias = Callable[[Context], Choice]


@dataclass(frozen=True)
class Rule:
    """A registered rule. ``options``: the search.* keys it reads that the other rules do not (search.final.* is
    "final"); ``ranks``: it returns a ranking, whose best search.final.cells a final stage can train; ``needs_alpha``:
    it reads what alpha learned, so a mixer that never steps alpha cannot serve it; ``scores``: it ranks by zero-cost
    scores and needs no training (search.epochs=0 suits it); ``summary``: what it does, for the key's help."""

    name: str
    choose: ChooseFn
    options: tuple[str, ...]
    ranks: bool
    needs_alpha: bool
    scores: bool
    summary: str


_RULES: dict[str, Rule] = {}


def register_rule(name: str, *, options: tuple[str, ...], ranks: bool, needs_alpha: bool, scores: bool,
                  summary: str) -> Callable[[ChooseFn], ChooseFn]:
    """Make ``choose(ctx) -> Genotype | list[Genotype]`` available as search.derive=name (see Rule for the rest). A
    rule that ranks lists "final" among its options, since the final stage trains the best of its ranking; a name
    already registered is refused."""
    def add(choose: ChooseFn) -> ChooseFn:
        if name in _RULES:
            raise ValueError(f"a rule named {name!r} is already registered; registered: {', '.join(_RULES)}")
        if ranks != ("final" in options):
            raise ValueError(f"rule {name!r}: ranks={ranks} needs 'final' {'in' if ranks else 'out of'} its options "
                             f"{list(options)}: only a ranking goes on to the final stage (search.final.*)")
        _RULES[name] = Rule(name, choose, tuple(options), ranks, needs_alpha, scores, summary)
        return choose
    return add


def rule_names() -> tuple[str, ...]:
    return tuple(_RULES)


def check_rule_name(name: str, key: str = "search.derive") -> None:
    """Raise a one-line UserError, naming ``key``, for a name that is not a registered rule."""
    if name not in _RULES:
        hint = did_you_mean(name, tuple(_RULES))
        raise UserError(f"{key}={name!r} is not valid{hint}; valid: {', '.join(_RULES)}")


def get_rule(name: str) -> Rule:
    check_rule_name(name)
    return _RULES[name]


# ---------------------------------------------------------------------------------------------- the built-in rules

def _alpha(ctx: Context) -> Genotype:
    """The genotype alpha stands for, by the space's rule of that name, with search.max_skip's cap."""
    s = ctx.cfg.search
    return ctx.model.genotype(s.derive, s.max_skip)


register_rule("darts", options=("max_skip",), ranks=False, needs_alpha=True, scores=False,
              summary="by alpha; darts space: 2 distinct inputs per node")(_alpha)
register_rule("gdas", options=("max_skip",), ranks=False, needs_alpha=True, scores=False,
              summary="darts space: top-2 (op, input) pairs")(_alpha)


@register_rule("perturb", options=("perturb_by",), ranks=False, needs_alpha=True, scores=False,
               summary="by how much the supernet's accuracy, or with search.perturb_by=score its zero-cost score, "
                       "drops without each op; Wang et al. 2021, Xiang et al. 2023")
def _perturb(ctx: Context) -> Genotype:
    from nas.searching.perturb import select_by_perturbation, supernet_accuracy, supernet_score

    cfg, model = ctx.cfg, ctx.model
    s = cfg.search
    if s.perturb_by == "score":
        measure = supernet_score(model, s.score, s.ensemble, ctx.score_batch())
    else:
        measure = supernet_accuracy(model, ctx.plain, cfg.seed, ctx.amp, ctx.memory_format)
    return select_by_perturbation(model, measure, cfg.seed, ctx.log.print)


@register_rule("sample", options=("samples", "final"), ranks=True, needs_alpha=False, scores=False,
               summary="the best of search.samples random cells, scored with the supernet's weights on the alpha "
                       "half; Li & Talwalkar 2019")
def _sample(ctx: Context) -> list[Genotype]:
    from nas.searching.perturb import select_by_sampling

    cfg = ctx.cfg
    return select_by_sampling(ctx.model, ctx.plain, cfg.seed, cfg.search.samples, ctx.amp, ctx.memory_format,
                              ctx.log.print)


@register_rule("score", options=("samples", "pool", "final"), ranks=True, needs_alpha=False, scores=True,
               summary="the best of search.samples cells by the zero-cost search.score at initialisation, e.g. "
                       "NASWOT, Mellor et al. 2021")
def _score(ctx: Context) -> list[Genotype]:
    from nas.searching.zerocost import cells_from_alpha, random_cells, rank_cells
    from nas.space.derivation import alpha_rule

    cfg, model, log = ctx.cfg, ctx.model, ctx.log
    s, space = cfg.search, model.space
    rule = alpha_rule(s.derive)
    keep = model.budget.fits if model.budget is not None else None  # a budget: only the cells that fit compete
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
    return [g for g, _ in rank_cells(pool, s.score, s.ensemble, ctx.score_batch(), C=cfg.model.C,
                                     layers=cfg.model.layers, num_classes=ctx.data.classes, seed=cfg.seed,
                                     memory_format=ctx.memory_format, say=log.print,
                                     what="cells drawn from alpha" if s.pool == "alpha" else "random cells")]
