"""The supernet: every edge of every cell is a MixedEdge holding all candidate ops, combined by a mixer.

DARTS space: the search network of Liu et al. (ICLR 2019, Sec. 3.1): a 3x3 conv stem, ``layers`` cells
with reduction cells at 1/3 and 2/3 of the depth, two-input cells with 1x1 (or factorized-reduce)
preprocessing. NAS-Bench-201 space: the macro skeleton of Dong & Yang (ICLR 2020, Fig. 1): stem, three
stages of N cells, residual reduction blocks between the stages, one cell shared by every position.

alpha holds one (num_edges, num_ops) logit matrix per cell type; one mixing (one GDAS sample) per cell
type per forward pass is shared by all cells of that type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.searching.mixing import Mixer, Mixing, beta_decay, masked
from nas.space.genotype import Genotype, derive
from nas.space.ops import (
    FactorizedReduce,
    FixedReductionCell,
    ReLUConvBN,
    ResBlock,
    Zero,
    create_search_op,
    is_parameter_free,
    sole_avg_pool,
    split_final_bn,
)
from nas.space.spaces import SearchSpace, darts_skeleton, search_space


class MixedEdge(nn.Module):
    """All candidate ops of one edge; ``forward`` lets the mixing decide which run and how they combine.

    Each op is classified once, for GDAS's memory-free straight-through: "zero" (`none`), "bn" (ends in a
    non-affine BatchNorm: ``tails`` holds (everything before it, the BN)), "avgpool" (an average pooling alone:
    ``tails`` holds it) or "plain".
    """

    def __init__(self, space: SearchSpace, index: int, C: int, stride: int, pool_bn: bool | None = None):
        super().__init__()
        self.index = index  # row of alpha
        pool_bn = space.name == "darts" if pool_bn is None else pool_bn  # DARTS's network: a BN after pooling
        self.ops = nn.ModuleList(create_search_op(name, C, stride, pool_bn=pool_bn) for name in space.ops)
        self.tails: list[Any] = [split_final_bn(op) or sole_avg_pool(op) for op in self.ops]  # not registered again
        self.kinds = ["zero" if isinstance(op, Zero) else "bn" if isinstance(tail, tuple) else
                      "avgpool" if tail is not None else "plain" for op, tail in zip(self.ops, self.tails, strict=True)]
        self.free = [is_parameter_free(name) and name != "none" for name in space.ops]  # the ops dropout may hit
        self.drop = 0.0  # search.param_free_dropout at this epoch

    def post(self, k: int, out: torch.Tensor) -> torch.Tensor:
        """Op k's output as the edge uses it: P-DARTS's operation-level dropout when op k is parameter-free."""
        if self.drop and self.free[k] and self.training:
            return nn.functional.dropout(out, self.drop, training=True)
        return out

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor | None:
        return mixing.edge(self.index, x, self)

    def zeros(self, x: torch.Tensor) -> torch.Tensor:
        """This edge's output shape, all zeros (for a node whose every edge sampled `none`)."""
        zero: nn.Module = self.ops[self.kinds.index("zero")]
        return zero(x)


class SearchCell(nn.Module):
    """The DAG of one cell: node j = sum of the mixed edges from every earlier node."""

    def __init__(self, space: SearchSpace, C: int, reduction: bool, pool_bn: bool | None = None):
        super().__init__()
        self.space = space
        self.edges = nn.ModuleList(
            MixedEdge(space, e, C, stride=2 if reduction and src < space.num_inputs else 1, pool_bn=pool_bn)
            for e, (src, _) in enumerate(space.edges))
        self._into = [space.edges_into(node) for node in space.nodes]  # edge indices per node

    def forward(self, inputs: list[torch.Tensor], mixing: Mixing) -> torch.Tensor:
        states = list(inputs)
        for edge_ids in self._into:
            node: torch.Tensor | None = None
            carrier: torch.Tensor | None = None  # 0-dim, value 0: alpha's gradient through sampled `none` edges
            for e in edge_ids:
                h = self.edges[e](states[self.space.edges[e][0]], mixing)
                if h is None:  # a sampled `none`: exact zeros, nothing to add
                    continue
                if h.dim() == 0:
                    carrier = h if carrier is None else carrier + h
                else:
                    node = h if node is None else node + h
            if node is None:  # every edge into this node sampled `none`
                first: MixedEdge = self.edges[edge_ids[0]]  # type: ignore[assignment]
                node = first.zeros(states[self.space.edges[edge_ids[0]][0]])
            states.append(node if carrier is None else node + carrier)
        out = [states[i] for i in self.space.concat]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class DartsSearchCell(nn.Module):
    """A DARTS cell: preprocess the outputs of the two previous cells to C channels, then the DAG."""

    def __init__(self, space: SearchSpace, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 pool_bn: bool = True):
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                                       else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.dag = SearchCell(space, C, reduction, pool_bn)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        return self.dag([self.preprocess0(s0), self.preprocess1(s1)], mixing)


class Supernet(nn.Module):
    """alpha per cell type, the mixer, and the split of parameters into arch (alpha) and weights."""

    def __init__(self, space: SearchSpace, mixer: Mixer):
        super().__init__()
        self.space, self.mixer = space, mixer
        self.alpha = nn.ParameterDict({
            t: nn.Parameter(1e-3 * torch.randn(space.num_edges, space.num_ops))  # (E, K) edge x op logits
            for t in space.cell_types})
        self._step: str | None = None
        self._weights: list[nn.Parameter] | None = None  # cached: walking ~5000 modules per step is costly
        self.op_mask: dict[str, torch.Tensor] | None = None  # (E, K) bool per cell type: the ops allowed
        self.generator: torch.Generator | None = None  # the samples' source (None: torch's global generator)
        self.weight_mixer: Mixer | None = None  # the weight steps' own mixer (search.weight_sampling=uniform)
        self.beta_decay = 0.0  # search.beta_decay: the weight of beta-DARTS's regulariser in the alpha loss
        self.budget: Any = None  # search.budget: a nas.searching.budget.Budget whose cost term joins the alpha loss
        self._mixings: dict[str, Mixing] = {}  # the last forward pass's, which the cost term reads

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        if self._weights is None:  # Module.to() keeps the Parameter objects, so the list stays valid
            self._weights = [p for name, p in self.named_parameters() if not name.startswith("alpha.")]
        return self._weights

    def set_step(self, step: str) -> None:
        """Which parameters the next backward pass computes gradients for: "weights", "alpha", "both" (the
        second-order alpha gradient needs the validation loss's gradient for both) or "none".

        A weight step never computes alpha gradients and an alpha step never computes weight gradients:
        the frozen side gets requires_grad=False, so autograd does not even record that work, and its
        gradients from the previous step are dropped (their memory is free during the other step).
        """
        if step == self._step:
            return
        assert step in ("weights", "alpha", "both", "none"), step
        for params, active in ((self.arch_parameters(), step in ("alpha", "both")),
                               (self.weight_parameters(), step in ("weights", "both"))):
            for p in params:
                p.requires_grad_(active)
                if not active:
                    p.grad = None
        self._step = step

    def mixings(self) -> dict[str, Mixing]:
        """One mixing (one GDAS sample) per cell type for this forward pass; in a weight step, the weight mixer's
        when there is one (fair training: every op sampled as often)."""
        masks = self.op_mask or {}
        mixer = self.weight_mixer if self.weight_mixer is not None and self._step == "weights" else self.mixer
        self._mixings = {t: mixer(a, masks.get(t), self.generator) for t, a in self.alpha.items()}
        return self._mixings

    def cost_weights(self, sampled: bool = True) -> dict[str, torch.Tensor]:
        """(E, K) per cell type that a cell's expected cost is taken under: with ``sampled``, the last GDAS sample's
        straight-through one-hot (so the cost is the sampled cell's, with a gradient to alpha through the soft
        weights); otherwise, and for every other mixer, softmax(alpha) over the allowed ops."""
        masks = self.op_mask or {}
        out = {}
        for t, a in self.alpha.items():
            hard = getattr(self._mixings.get(t), "hard", None) if sampled else None
            out[t] = hard if hard is not None else masked(a, masks.get(t)).softmax(-1)
        return out

    def regularizer(self) -> torch.Tensor | None:
        """The alpha loss's terms beyond the validation loss, summed over the cell types: the mixer's own (DrNAS's
        KL) and beta-decay (None: there are none)."""
        terms = [r for a in self.alpha.values() if (r := self.mixer.regularizer(a)) is not None]
        if self.beta_decay:
            terms += [self.beta_decay * beta_decay(a) for a in self.alpha.values()]
        if self.budget is not None:
            terms.append(self.budget.loss(self.budget.cost.expected(self.cost_weights())))
        return sum(terms[1:], terms[0]) if terms else None

    def set_param_free_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, MixedEdge):
                m.drop = p

    def genotype(self, rule: str = "darts", max_skip: int | None = None) -> Genotype:
        alphas = {t: a.detach().cpu() for t, a in self.alpha.items()}
        return derive(self.space, alphas, rule, max_skip)


class DartsSupernet(Supernet):
    """The DARTS-space search network: a stem, ``layers`` cells with reductions at a third and two thirds, global
    pooling and a linear classifier. ``macro="gdas"`` is the official GDAS (NASNet) one: the same cell layout (6
    cells give its N=2: 2 normal, reduce, 1 normal, reduce, 1 normal), no BN after pooling ops, and a BN-ReLU before
    the global pooling. ``macro="gdas_frc"`` is that network with GDAS-FRC's fixed reduction cell in both reduction
    positions; then only the normal cell has an alpha (the space's cell_types say which cells are searched)."""

    def __init__(self, space: SearchSpace, mixer: Mixer, *, C: int, layers: int, num_classes: int,
                 in_channels: int = 3, stem_multiplier: int = 3, macro: str = "darts"):
        super().__init__(space, mixer)
        fixed = "reduce" not in space.cell_types  # GDAS-FRC: the fixed reduction cell (4 nodes out)
        stem, places, outs = darts_skeleton(C, layers, stem_multiplier,
                                            lambda reduction: 4 if reduction and fixed else len(space.concat))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem))
        self.cells = nn.ModuleList()
        for p in places:
            cell: nn.Module
            if p.reduction and fixed:
                cell = FixedReductionCell(p.C_pp, p.C_p, p.C, p.reduction_prev, affine=False)
            else:
                cell = DartsSearchCell(space, p.C_pp, p.C_p, p.C, p.reduction, p.reduction_prev,
                                       pool_bn=macro == "darts")
            self.cells.append(cell)
        C_p = outs[-1]
        self.lastact: nn.Module = (nn.Sequential(nn.BatchNorm2d(C_p), nn.ReLU(inplace=True)) if macro != "darts"
                                   else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mix = self.mixings()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, mix[kind]) if kind in mix else cell(s0, s1)  # the fixed cell: no mixing
        return self.classifier(self.pool(self.lastact(s1)).flatten(1))


class NB201Supernet(Supernet):
    def __init__(self, space: SearchSpace, mixer: Mixer, *, C: int, layers: int, num_classes: int,
                 in_channels: int = 3):
        super().__init__(space, mixer)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for stage in range(3):
            C_curr = C * 2 ** stage
            if stage > 0:
                self.cells.append(ResBlock(C_prev, C_curr, stride=2))
            self.cells.extend(SearchCell(space, C_curr, reduction=False) for _ in range(layers))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixing = self.mixings()["normal"]
        h = self.stem(x)
        for cell in self.cells:
            h = cell([h], mixing) if isinstance(cell, SearchCell) else cell(h)
        return self.classifier(self.pool(self.lastact(h)).flatten(1))


def build_supernet(space: str | SearchSpace, *, C: int, layers: int, num_classes: int, mixer: Mixer,
                   in_channels: int = 3, stem_multiplier: int | None = None, macro: str = "darts") -> Supernet:
    sp = search_space(space, macro=macro) if isinstance(space, str) else space
    if macro == "gdas_frc" and "reduce" in sp.cell_types:
        raise ValueError("macro gdas_frc searches no reduction cell: pass "
                         "nas.space.spaces.search_space(..., macro=...)")
    if sp.name == "darts":
        return DartsSupernet(sp, mixer, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
                             stem_multiplier=3 if stem_multiplier is None else stem_multiplier, macro=macro)
    return NB201Supernet(sp, mixer, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels)
