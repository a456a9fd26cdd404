"""Discrete networks built from a Genotype, trained from scratch by nas/train.py.

DARTS space: the CIFAR evaluation network of Liu et al. (ICLR 2019, Sec. 3.2, as in their NetworkCIFAR): a stem
of 3*C channels, ``layers`` cells with reduction cells at 1/3 and 2/3 of the depth, two-input cells with 1x1 (or
factorized-reduce) preprocessing, an auxiliary head after the cell at 2/3 depth (Szegedy et al. 2015) and
drop-path on every non-identity op (Larsson et al. 2017); a genotype with GDAS-FRC's fixed reduction cell gets that
cell at both reduction positions. NAS-Bench-201: the macro skeleton of Dong & Yang
(ICLR 2020, Fig. 1) with the genotype's cell in every position.

Parameters are counted as the DARTS code counts them: every parameter except the auxiliary head's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.space.genotype import Genotype, Node
from nas.space.ops import FactorizedReduce, FixedReductionCell, ReLUConvBN, ResBlock, create_op, drop_path
from nas.space.spaces import get_space


@dataclass(frozen=True)
class CellPlace:
    """One cell of the DARTS macro skeleton: the channels of its two inputs, its own channels (C), and whether it
    and the cell before it reduce."""

    C_pp: int
    C_p: int
    C: int
    reduction: bool
    reduction_prev: bool


def darts_skeleton(C: int, layers: int, stem_multiplier: int, width: Callable[[bool], int]
                   ) -> tuple[int, list[CellPlace], list[int]]:
    """The DARTS macro skeleton (Liu et al. 2019), which the search network, the trained network and a budget's cost
    network all follow: a stem of stem_multiplier * C channels, then ``layers`` cells, reductions at a third and two
    thirds of the depth, each doubling C; a cell's output has width(reduction) * its C channels (the nodes it
    concatenates). Returns the stem's channels, each cell's place, and each cell's output channels."""
    stem = stem_multiplier * C
    C_pp, C_p, C_curr = stem, stem, C
    places, outs = [], []
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        places.append(CellPlace(C_pp, C_p, C_curr, reduction, reduction_prev))
        reduction_prev = reduction
        C_pp, C_p = C_p, width(reduction) * C_curr
        outs.append(C_p)
    return stem, places, outs


class DartsCell(nn.Module):
    def __init__(self, nodes: tuple[Node, ...], concat: tuple[int, ...], C_pp: int, C_p: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (FactorizedReduce(C_pp, C) if reduction_prev
                                       else ReLUConvBN(C_pp, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        edges = [(op, src) for node in nodes for op, src in node]
        self.ops = nn.ModuleList(create_op(op, C, C, 2 if reduction and src < 2 else 1) for op, src in edges)
        self.inputs = [src for _, src in edges]
        self.node_sizes = [len(node) for node in nodes]
        self.concat = concat

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float | torch.Tensor | None) -> torch.Tensor:
        """``drop_prob``: drop-path probability for every non-identity op in training (None: no drop-path)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for size in self.node_sizes:
            total: torch.Tensor | None = None
            for _ in range(size):
                op = self.ops[k]
                h = op(states[self.inputs[k]])
                if self.training and drop_prob is not None and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
                k += 1
            assert total is not None
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS CIFAR auxiliary classifier. On its designed 8x8 input it pools 5x5 windows with stride 3 to
    2x2; on other sizes it pools adaptively to 2x2, so any image size works (no parameter changes)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        x = self.pool(x) if x.shape[-2:] == (8, 8) else F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """forward returns (logits, auxiliary logits); the latter only in training mode with a head."""

    def __init__(self, genotype: Genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool,
                 in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        # The drop-path probability lives in a tensor, so a compiled network need not recompile when it changes.
        self.drop_prob: torch.Tensor
        self.register_buffer("drop_prob", torch.zeros(()), persistent=False)
        self.use_drop_path = False
        self.aux_index = 2 * layers // 3

        def width(reduction: bool) -> int:  # the nodes a cell concatenates (the fixed reduction cell: 4)
            if reduction:
                return 4 if genotype.reduce_fixed else len(genotype.reduce_concat)
            return len(genotype.normal_concat)

        stem, places, outs = darts_skeleton(C, layers, stem_multiplier, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem))
        self.cells = nn.ModuleList()
        for p in places:
            cell: nn.Module
            if p.reduction and genotype.reduce_fixed:
                cell = FixedReductionCell(p.C_pp, p.C_p, p.C, p.reduction_prev)
            else:
                nodes, concat = (genotype.reduce, genotype.reduce_concat) if p.reduction else \
                    (genotype.normal, genotype.normal_concat)
                cell = DartsCell(nodes, concat, p.C_pp, p.C_p, p.C, p.reduction, p.reduction_prev)
            self.cells.append(cell)
        C_aux = outs[self.aux_index] if self.aux_index < layers else stem
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(outs[-1], num_classes)

    @property
    def drop_path_prob(self) -> float:
        return float(self.drop_prob)

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        """Set per epoch by the trainer; drop-path stays off until p first exceeds 0."""
        self.drop_prob.fill_(p)
        self.use_drop_path = self.use_drop_path or p > 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        aux = None
        drop = self.drop_prob if self.use_drop_path else None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(self.pool(s1).flatten(1)), aux


class NB201Cell(nn.Module):
    """Node j = sum over its edges of op(node i); the cell outputs its last node."""

    def __init__(self, nodes: tuple[Node, ...], C: int):
        super().__init__()
        self.nodes = [[src for _, src in node] for node in nodes]
        self.op_names = [op for node in nodes for op, _ in node]  # per edge, in the order of self.ops
        self.ops = nn.ModuleList(create_op(op, C, C, 1) for op in self.op_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        k = 0
        for srcs in self.nodes:
            total = self.ops[k](states[srcs[0]])
            for j, src in enumerate(srcs[1:], start=1):
                total = total + self.ops[k + j](states[src])
            k += len(srcs)
            states.append(total)
        return states[-1]


class NB201Network(nn.Module):
    def __init__(self, genotype: Genotype, *, C: int, N: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.drop_path_prob = 0.0  # NAS-Bench-201 trains without drop-path; kept for a uniform trainer
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        for stage in range(3):
            C_curr = C * 2 ** stage
            if stage > 0:
                layers.append(ResBlock(C_curr // 2, C_curr, stride=2))
            layers.extend(NB201Cell(genotype.normal, C_curr) for _ in range(N))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.pool(h).flatten(1)), None


def check_network(space: str, *, layers: int, auxiliary: bool = False, drop_path: bool = False,
                  stem_multiplier: int | None = None) -> None:
    """What a network of ``space`` (a searched supernet or a trained one) can be built from, as the space says; the
    config checks recipes with it and build_network networks."""
    get_space(space).check_network(layers=layers, auxiliary=auxiliary, drop_path=drop_path,
                                   stem_multiplier=stem_multiplier)


def build_network(genotype: Genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                  in_channels: int = 3, stem_multiplier: int | None = None) -> nn.Module:
    """The network a genotype stands for, as its space builds it. ``layers``: cells (darts) or cells per stage
    (nb201)."""
    check_network(genotype.space, layers=layers, auxiliary=auxiliary, stem_multiplier=stem_multiplier)
    return get_space(genotype.space).network(genotype, C=C, layers=layers, num_classes=num_classes,
                                             auxiliary=auxiliary, in_channels=in_channels,
                                             stem_multiplier=stem_multiplier)


def count_parameters(model: nn.Module) -> int:
    """Parameters as the DARTS code counts them: the auxiliary head excluded."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head."))


def count_flops(model: nn.Module, in_channels: int, size: int) -> int:
    """Multiply-adds of one forward pass on one image (evaluation mode, so no auxiliary head), counted by
    torch.utils.flop_counter, which counts 2 FLOPs per multiply-add of convolutions and matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
