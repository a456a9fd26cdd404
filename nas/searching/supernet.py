"""The supernet: every edge of every searched cell is a MixedEdge holding all candidate ops, combined by a mixer.

The network around the searched cells is the space's (Space.search_layers, Space.search_forward: in the DARTS space
the search network of Liu et al., ICLR 2019, Sec. 3.1, or GDAS's; in NAS-Bench-201 the macro skeleton of Dong & Yang,
ICLR 2020, Fig. 1); the supernet adds alpha, the mixer and the split of parameters into alpha and weights.

alpha holds one (num_edges, num_ops) logit matrix per cell type; one mixing (one GDAS sample) per cell
type per forward pass is shared by all cells of that type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.searching.mixing import Mixer, Mixing, beta_decay, masked
from nas.space.derivation import derive
from nas.space.genotype import Genotype
from nas.space.ops import Zero, create_search_op, is_parameter_free, sole_avg_pool, split_final_bn
from nas.space.spaces import Space, search_space


class MixedEdge(nn.Module):
    """All candidate ops of one edge; ``forward`` lets the mixing decide which run and how they combine.

    Each op is classified once, for GDAS's memory-free straight-through: "zero" (`none`), "bn" (ends in a
    non-affine BatchNorm: ``tails`` holds (everything before it, the BN)), "avgpool" (an average pooling alone:
    ``tails`` holds it) or "plain".
    """

    def __init__(self, space: Space, index: int, C: int, stride: int, pool_bn: bool | None = None):
        super().__init__()
        self.index = index  # row of alpha
        pool_bn = space.pool_bn if pool_bn is None else pool_bn  # DARTS's network: a BN after pooling
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

    def __init__(self, space: Space, C: int, reduction: bool, pool_bn: bool | None = None):
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


class Supernet(nn.Module):
    """alpha per cell type, the mixer, the split of parameters into arch (alpha) and weights, and the space's search
    network (model.macro) with a SearchCell in every searched position: its layers (stem, cells, ...) are the
    supernet's own modules."""

    def __init__(self, space: Space, mixer: Mixer, *, C: int, layers: int, num_classes: int, in_channels: int = 3,
                 stem_multiplier: int | None = None):
        super().__init__()
        self.space, self.mixer = space, mixer
        self.alpha = nn.ParameterDict({
            t: nn.Parameter(1e-3 * torch.randn(space.num_edges, space.num_ops))  # (E, K) edge x op logits
            for t in space.cell_types})

        def dag(C: int, reduction: bool, pool_bn: bool) -> SearchCell:
            return SearchCell(space, C, reduction, pool_bn)

        for name, module in space.search_layers(dag, C=C, layers=layers, num_classes=num_classes,
                                                in_channels=in_channels, stem_multiplier=stem_multiplier).items():
            self.add_module(name, module)
        self._step: str | None = None
        self._weights: list[nn.Parameter] | None = None  # cached: walking ~5000 modules per step is costly
        self.op_mask: dict[str, torch.Tensor] | None = None  # (E, K) bool per cell type: the ops allowed
        self.generator: torch.Generator | None = None  # the samples' source (None: torch's global generator)
        self.weight_mixer: Mixer | None = None  # the weight steps' own mixer (search.weight_sampling=uniform)
        self.beta_decay = 0.0  # search.beta_decay: the weight of beta-DARTS's regulariser in the alpha loss
        self.budget: Any = None  # search.budget: a nas.searching.budget.Budget whose cost term joins the alpha loss
        self._mixings: dict[str, Mixing] = {}  # the last forward pass's, which the cost term reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.search_forward(self, x, self.mixings())

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


def build_supernet(space: str | Space, *, C: int, layers: int, num_classes: int, mixer: Mixer,
                   in_channels: int = 3, stem_multiplier: int | None = None, macro: str | None = None) -> Supernet:
    """The supernet of ``space`` (a name, or the space a search runs in: nas.space.spaces.search_space) in its search
    network ``macro`` (model.macro; null: the space's own)."""
    sp = search_space(space, macro=macro) if isinstance(space, str) else space
    if macro is not None and macro != sp.macro:
        raise ValueError(f"the space searches in its {sp.macro} network, not {macro}: pass "
                         "nas.space.spaces.search_space(..., macro=...)")
    return Supernet(sp, mixer, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
                    stem_multiplier=stem_multiplier)
