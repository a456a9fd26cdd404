"""How alpha turns into the output of a mixed edge: GDAS, DARTS and SNAS, and the temperature schedule.

GDAS (Dong & Yang, CVPR 2019, Eq. 3-5): per edge, draw one op by the Gumbel-max trick, an exact sample of
softmax(alpha); the forward pass computes only that op and its value is exactly that op's output, while
the backward pass reaches every alpha entry through the soft weights softmax((log_softmax(alpha) + g) / tau)
(straight-through). DARTS (Liu et al., ICLR 2019, Eq. 2): every edge outputs sum_k softmax(alpha)_k op_k(x).
SNAS-style (Xie et al., ICLR 2019): every edge outputs sum_k p_k op_k(x), p a soft Gumbel-softmax sample.
DrNAS (Chen et al., ICLR 2021, Eq. 2-4): every edge outputs sum_k w_k op_k(x), w a sample of Dirichlet(beta) with
concentration beta = elu(alpha) + 1, differentiable in beta by the pathwise (implicit reparameterization) gradient
of its Gamma draws; optionally KL(Dirichlet(beta) || Dirichlet(1)) is added to the alpha loss.

GDAS's hard sample and its straight-through gradient are nas/searching/gumbel.py's; this module turns them into a
mixing, and is the only one that knows tau.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from nas.errors import UserError
from nas.searching.gumbel import (
    AvgPoolStraightThrough,
    BNStraightThrough,
    StraightThrough,
    gumbel_like,
    gumbel_softmax_hard,
    zero_carrier,
)
from nas.text import did_you_mean


class Mixing(Protocol):
    """Edge weights of one cell type for one forward pass.

    ``edge`` returns the edge's output, or None for exact zeros that cost nothing (a sampled `none` when alpha
    takes no gradient), or a 0-dim tensor of value 0 that carries alpha's gradient (a sampled `none` otherwise).
    """

    def edge(self, e: int, x: torch.Tensor, edge: Any) -> torch.Tensor | None: ...


def masked(alpha: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """alpha with the ops that ``mask`` (E, K) bool leaves out at -inf: they are never sampled."""
    return alpha if mask is None else alpha.masked_fill(~mask, float("-inf"))


class GdasSample:
    """One sampled op per edge, shared by every cell of the type; with a mask, only among the allowed ops.

    ``gradient`` is the straight-through rule: "all_ops", y = out_k hard_k + sum_{j != k} hard_j, so every alpha
    entry gets a gradient (the official NAS-Bench-201 GDAS cell); "sampled_op", y = out_k hard_k, so only the sampled
    op's weight carries one (the official DARTS-space GDAS cell). Both forward exactly out_k.
    """

    def __init__(self, alpha: torch.Tensor, tau: float, mask: torch.Tensor | None = None, gradient: str = "all_ops",
                 generator: torch.Generator | None = None):
        hard, index = gumbel_softmax_hard(masked(alpha, mask), tau, generator)
        if gradient == "sampled_op" and alpha.requires_grad:
            one_hot = hard.detach()  # exactly one_hot(index)
            hard = one_hot + (hard - one_hot) * one_hot  # the same value; d hard_j = 0 for every j != k
        self.index: list[int] = index.tolist()  # (E,) as Python ints: which module to run
        self.hard = hard if alpha.requires_grad else None  # (E, K); None when alpha takes no gradient

    def edge(self, e: int, x: torch.Tensor, edge: Any) -> torch.Tensor | None:
        k = self.index[e]
        kind = edge.kinds[k]
        if kind == "zero":
            return None if self.hard is None else zero_carrier(self.hard[e], k)
        op = edge.ops[k]
        if self.hard is None:
            return edge.post(k, op(x))
        if kind == "bn" and op.training:
            body, bn = edge.tails[k]
            return edge.post(k, BNStraightThrough.apply(body(x), self.hard[e], k, bn))
        if kind == "avgpool":
            return edge.post(k, AvgPoolStraightThrough.apply(x, self.hard[e], k, edge.tails[k]))
        return edge.post(k, StraightThrough.apply(op(x), self.hard[e], k))


class DartsWeights:
    """softmax(alpha) per edge; every op runs. With a mask (E, K) bool, the ops it leaves out weigh 0 and the
    others keep their weights (no renormalization), and an edge with a single allowed op gives it weight 1: the
    projection of Wang et al. (ICLR 2021)."""

    def __init__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None):
        self.weights = F.softmax(alpha, dim=-1)  # (E, K)
        if mask is not None:
            single = mask.sum(-1, keepdim=True) == 1
            self.weights = torch.where(single, mask.to(alpha.dtype), self.weights * mask)

    def edge(self, e: int, x: torch.Tensor, edge: Any) -> torch.Tensor | None:
        w = self.weights[e]
        return sum(w[k] * edge.post(k, op(x)) for k, op in enumerate(edge.ops))  # every op, `none` included


class UniformSample:
    """One op per edge drawn uniformly (among the allowed ones, with a mask), shared by every cell of the type; alpha
    plays no part. The forward value is exactly the op's output, as in GDAS."""

    def __init__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        uniform = masked(torch.zeros(alpha.shape, device=alpha.device), mask)  # alpha plays no part
        self.index: list[int] = torch.multinomial(uniform.softmax(-1), 1, generator=generator).squeeze(1).tolist()

    def edge(self, e: int, x: torch.Tensor, edge: Any) -> torch.Tensor | None:
        k = self.index[e]
        return None if edge.kinds[k] == "zero" else edge.post(k, edge.ops[k](x))


class SnasWeights(DartsWeights):
    """A soft Gumbel-softmax sample per edge, softmax((log_softmax(alpha) + g) / tau), shared by every cell of the
    type; every op runs, weighted by it, as in DartsWeights. With a mask, the ops it leaves out weigh exactly 0."""

    def __init__(self, alpha: torch.Tensor, tau: float, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        noise = gumbel_like(alpha, generator)
        self.weights = ((F.log_softmax(masked(alpha, mask), dim=-1) + noise) / tau).softmax(dim=-1)


class DirichletWeights(DartsWeights):
    """A sample of Dirichlet(elu(alpha) + 1) per edge, shared by every cell of the type; every op runs, weighted by
    it, as in DartsWeights (with a mask, the ops it leaves out weigh exactly 0). The sample is Gamma(beta_k) draws
    normalised by their sum: each draw is differentiable in its concentration (the implicit reparameterization
    gradient torch implements for Gamma), so alpha's gradient flows through the sample."""

    def __init__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        gamma = torch._standard_gamma(concentration(alpha), generator=generator)  # (E, K), > 0
        if mask is not None:
            gamma = gamma * mask  # a left-out op weighs exactly 0 (an edge keeps at least one op)
        self.weights = gamma / gamma.sum(-1, keepdim=True)


def concentration(alpha: torch.Tensor) -> torch.Tensor:
    """DrNAS's Dirichlet concentration beta = elu(alpha) + 1 > 0 (1 at alpha = 0: the uniform Dirichlet)."""
    return F.elu(alpha) + 1


def dirichlet_kl(alpha: torch.Tensor, prior: float = 1.0) -> torch.Tensor:
    """KL(Dirichlet(beta) || Dirichlet(prior * 1)) summed over the edges (DrNAS's KL regulariser)."""
    beta = concentration(alpha)
    anchor = torch.full_like(beta, prior)
    b0, a0 = beta.sum(-1), anchor.sum(-1)
    kl = (torch.lgamma(b0) - torch.lgamma(beta).sum(-1) - torch.lgamma(a0) + torch.lgamma(anchor).sum(-1)
          + ((beta - anchor) * (torch.digamma(beta) - torch.digamma(b0).unsqueeze(-1))).sum(-1))
    return kl.sum()


def beta_decay(alpha: torch.Tensor) -> torch.Tensor:
    """beta-DARTS's regulariser (Ye et al., CVPR 2022, Eq. 9): the mean over edges of logsumexp(alpha_e), whose
    gradient softmax(alpha_e) pulls the largest logits down most, keeping alpha's softmax from saturating early."""
    return torch.logsumexp(alpha, dim=-1).mean()


class Mixer(Protocol):
    name: str
    tau: float | None
    learns_alpha: bool  # False: the search takes no alpha steps (alpha's batches are only measured)

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> Mixing: ...

    def set_epoch(self, epoch: int, epochs: int) -> None: ...

    def regularizer(self, alpha: torch.Tensor) -> torch.Tensor | None: ...


class NoRegularizer:
    """A mixer whose alpha loss is the validation loss alone."""

    def regularizer(self, alpha: torch.Tensor) -> torch.Tensor | None:
        return None


class Annealed(NoRegularizer):
    """A Gumbel mixer's temperature: tau_max at the first epoch, annealed to tau_min at the last."""

    learns_alpha = True

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, schedule: str = "linear"):
        self.tau_max, self.tau_min, self.schedule = tau_max, tau_min, schedule
        self.tau: float | None = tau_max

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.tau = tau_at(epoch, epochs, self.tau_max, self.tau_min, self.schedule)


class GDAS(Annealed):
    """Hard Gumbel-softmax sampling with a temperature annealed from tau_max to tau_min over the epochs."""

    name = "gdas"

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, schedule: str = "linear",
                 gradient: str = "all_ops"):
        super().__init__(tau_max, tau_min, schedule)
        self.gradient = gradient

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> GdasSample:
        assert self.tau is not None
        return GdasSample(alpha, self.tau, mask, self.gradient, generator)


class DARTS(NoRegularizer):
    """Continuous relaxation: every op weighted by softmax(alpha). No temperature."""

    name = "darts"
    tau: float | None = None
    learns_alpha = True

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> DartsWeights:
        return DartsWeights(alpha, mask)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass


class SNAS(Annealed):
    """Soft Gumbel-softmax relaxation (SNAS, Xie et al., ICLR 2019): every op runs, weighted by a fresh soft sample
    of softmax(alpha) at the annealed temperature; the same tau schedule as GDAS."""

    name = "snas"

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> SnasWeights:
        assert self.tau is not None
        return SnasWeights(alpha, self.tau, mask, generator)


class RandomMixer(NoRegularizer):
    """Random search with weight sharing (Li & Talwalkar, UAI 2019): every forward pass trains one op per edge drawn
    uniformly; alpha is never stepped. The genotype comes from scoring sampled cells (search.derive=sample)."""

    name = "random"
    tau: float | None = None
    learns_alpha = False

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> UniformSample:
        return UniformSample(alpha, mask, generator)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass


class DrNAS:
    """Dirichlet mixing (DrNAS, Chen et al., ICLR 2021): every op weighted by a fresh sample of Dirichlet(elu(alpha)
    + 1). ``kl`` > 0 adds kl * KL(Dirichlet(beta) || Dirichlet(1)) to the alpha loss (the paper's distance to an
    anchor); at 0 the only regulariser is alpha's weight decay, the L2 term of the official code's default."""

    name = "drnas"
    tau: float | None = None
    learns_alpha = True

    def __init__(self, kl: float = 0.0):
        self.kl = kl

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> DirichletWeights:
        return DirichletWeights(alpha, mask, generator)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def regularizer(self, alpha: torch.Tensor) -> torch.Tensor | None:
        return self.kl * dirichlet_kl(alpha) if self.kl else None


def tau_at(epoch: int, epochs: int, tau_max: float, tau_min: float, schedule: str = "linear") -> float:
    """Temperature for 0-based ``epoch`` of ``epochs``: tau_max at the first epoch, tau_min at the last."""
    t = epoch / (epochs - 1) if epochs > 1 else 0.0
    if schedule == "linear":
        return tau_max - (tau_max - tau_min) * t
    if schedule == "exponential":
        return tau_max * math.exp(t * math.log(tau_min / tau_max))
    raise UserError(f"unknown tau schedule {schedule!r}; valid: linear, exponential")


# ---------------------------------------------------------------------------------------------- registry

MixerFactory = Callable[..., Mixer]
_MIXERS: dict[str, tuple[MixerFactory, tuple[str, ...]]] = {}  # name -> (factory, the options it takes)


def register_mixer(name: str) -> Callable[[MixerFactory], MixerFactory]:
    """Make a mixer available as search.mixer=name. The factory takes, as keyword arguments named as the search.*
    keys, the keys it reads (tau_max, tau_min, tau_schedule, gdas_gradient, drnas_kl, ...) and no others: the search
    passes it exactly those, and the config refuses any of them set to a value of its own under a mixer that does
    not take it. A mixer that takes tau_max has a temperature (has_tau). A name already registered is refused."""
    def add(factory: MixerFactory) -> MixerFactory:
        if name in _MIXERS:
            raise ValueError(f"a mixer named {name!r} is already registered; registered: {', '.join(_MIXERS)}")
        params = inspect.signature(factory).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise ValueError(f"mixer {name!r}: the factory must name the options it takes, not take *args or "
                             "**kwargs")
        _MIXERS[name] = (factory, tuple(p.name for p in params))
        return factory
    return add


def mixer_names() -> tuple[str, ...]:
    return tuple(_MIXERS)


def mixer_options(name: str) -> tuple[str, ...]:
    """The options of create_mixer that the mixer ``name`` takes: the search.* keys it reads."""
    return _MIXERS[name][1]


def has_tau(name: str) -> bool:
    return "tau_max" in mixer_options(name)


def check_mixer_name(name: str, key: str = "mixer") -> None:
    """Raise a one-line UserError, naming ``key``, for a name that is not a registered mixer."""
    if name not in _MIXERS:
        hint = did_you_mean(name, tuple(_MIXERS))
        raise UserError(f"{key}={name!r} is not valid{hint}; valid: {', '.join(_MIXERS)}")


def create_mixer(name: str, **options: Any) -> Mixer:
    """The mixer registered as ``name``, built with ``options``: only those it takes (mixer_options)."""
    check_mixer_name(name)
    factory, takes = _MIXERS[name]
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise UserError(f"mixer {name!r} takes no option {unknown[0]!r}; its options: {', '.join(takes) or 'none'}")
    return factory(**options)


def _gdas(tau_max: float = 10.0, tau_min: float = 0.1, tau_schedule: str = "linear",
          gdas_gradient: str = "all_ops") -> GDAS:
    return GDAS(tau_max, tau_min, tau_schedule, gdas_gradient)


def _snas(tau_max: float = 10.0, tau_min: float = 0.1, tau_schedule: str = "linear") -> SNAS:
    return SNAS(tau_max, tau_min, tau_schedule)


def _drnas(drnas_kl: float = 0.0) -> DrNAS:
    return DrNAS(drnas_kl)


register_mixer("gdas")(_gdas)
register_mixer("darts")(DARTS)
register_mixer("snas")(_snas)
register_mixer("drnas")(_drnas)
register_mixer("random")(RandomMixer)
