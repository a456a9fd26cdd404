"""K NAS-Bench-201 networks of different cells as one module (horizontal fusion), so that a final stage trains its
finalists together: every feature map holds the K networks' channels side by side (network k's are the k-th block of
the map's channels), every convolution is grouped by network, every BatchNorm normalises each network's channels on
their own, and the classifier is one linear map per network. Where the cells differ, each edge runs each of its ops
on the channels of the networks that chose it.

The stack is built from K built networks (``StackedNB201(nets)``), whose weights it copies, so it starts where they
start; ``write_back`` copies its weights and statistics into them again. Each stacked tensor is the concatenation
along its first dimension of the K networks' tensors (``sources``), so that parameters, gradients and optimiser
states split into the networks' own (``split``) and join again (``join``). The forward pass of network k is that of
``nets[k]`` in value (up to the order of floating-point sums), and so is its gradient when the loss is the sum of
the networks' losses: a grouped convolution keeps the groups apart, BatchNorm's statistics are per channel, and SGD
with momentum and weight decay acts element by element.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nas.space.network import NB201Cell, NB201Network
from nas.space.ops import Zero


@dataclass(frozen=True)
class Source:
    """Rows ``start:start + rows`` of a stacked tensor are network ``net``'s tensor ``name`` (a state_dict key)."""

    net: int
    name: str
    start: int
    rows: int


class StackedLinear(nn.Module):
    """K linear maps of (B, K * in) to (B, K, out): weight (K * out, in), bias (K * out,)."""

    def __init__(self, K: int, features: int, out: int):
        super().__init__()
        self.K, self.features, self.out = K, features, out
        self.weight = nn.Parameter(torch.empty(K * out, features))
        self.bias = nn.Parameter(torch.empty(K * out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.K, self.out, self.features)
        return torch.einsum("bkf,kof->bko", x.view(len(x), self.K, self.features), w) + self.bias.view(self.K, -1)


class BoxAverage(nn.Module):
    """3x3 average pooling at stride 1 over the pixels inside the image (nn.AvgPool2d(3, 1, 1,
    count_include_pad=False)), as a depthwise convolution with a kernel of ones divided by each pixel's count of
    neighbours: the same values, several times faster on a CPU than the pooling kernel."""

    @staticmethod
    def fits(m: nn.AvgPool2d) -> bool:
        return (m.kernel_size in (3, (3, 3)) and m.stride in (1, (1, 1)) and m.padding in (1, (1, 1))
                and not m.count_include_pad and not m.ceil_mode and m.divisor_override is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, (H, W) = x.shape[1], x.shape[2:]
        ones = x.new_ones(C, 1, 3, 3)
        counts = nn.functional.conv2d(x.new_ones(1, 1, H, W), ones[:1], padding=1)  # (1, 1, H, W) 4, 6 or 9
        return nn.functional.conv2d(x, ones, padding=1, groups=C) / counts


def stack_leaf(leaves: Sequence[nn.Module], shared_input: bool = False) -> nn.Module:
    """One module for the same leaf of K networks: a Conv2d grouped by network (on an input shared by all, the stem,
    one ungrouped conv of K times the outputs), a BatchNorm2d of K times the channels, zeros of K times the
    channels; a leaf without state (ReLU, pooling) as it is. Weights are filled in by the caller."""
    m, K = leaves[0], len(leaves)
    if isinstance(m, nn.Conv2d):
        groups = m.groups if shared_input else m.groups * K
        return nn.Conv2d(m.in_channels * (1 if shared_input else K), m.out_channels * K, m.kernel_size,  # type: ignore[arg-type]
                         m.stride, m.padding, m.dilation, groups, m.bias is not None)  # type: ignore[arg-type]
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(m.num_features * K, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, Zero):
        return Zero(m.C_out * K, m.stride)
    if isinstance(m, nn.Linear):
        return StackedLinear(K, m.in_features, m.out_features)
    if isinstance(m, nn.AvgPool2d) and BoxAverage.fits(m):
        return BoxAverage()
    if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None:
        raise TypeError(f"cannot stack {type(m).__name__}: it holds state of its own")
    return copy.deepcopy(m)


def stack_tree(modules: Sequence[nn.Module], shared_input: bool = False) -> nn.Module:
    """The module tree of ``modules[0]`` (all K of the same structure) with every leaf stacked (stack_leaf); a
    composite's forward must be blind to the number of channels (sums, sequences), as NB201's blocks are."""
    if not list(modules[0].children()):
        return stack_leaf(modules, shared_input)
    out = copy.copy(modules[0])
    out._modules = {}
    first = True
    for name, _ in modules[0].named_children():
        out._modules[name] = stack_tree([m.get_submodule(name) for m in modules], shared_input and first)
        first = False  # only the first leaf of the stem reads the image itself
    out._parameters, out._buffers = {}, {}
    return out


class StackedCell(nn.Module):
    """The cells of K networks at one position: edge e runs, for each op some networks chose for it, that op
    stacked over those networks on their channels (a ``none`` adds nothing, a skip its input)."""

    def __init__(self, cells: Sequence[NB201Cell], C: int):
        super().__init__()
        self.nodes = cells[0].nodes
        self.K = len(cells)
        self.groups: list[list[tuple[str, list[int]]]] = []  # per edge: (op, the networks that chose it)
        self.ops = nn.ModuleDict()
        for e in range(len(cells[0].ops)):
            chose: dict[str, list[int]] = {}
            for k, cell in enumerate(cells):
                chose.setdefault(cell.op_names[e], []).append(k)
            self.groups.append(list(chose.items()))
            for op, nets in chose.items():
                if not isinstance(cells[nets[0]].ops[e], Zero | nn.Identity):
                    self.ops[f"{e}_{op}"] = stack_tree([cells[k].ops[e] for k in nets])
                # the group's channels, as a buffer that moves with the module
                self.register_buffer(f"idx_{e}_{op}", channels(nets, C), persistent=False)
            order = torch.cat([channels(nets, C) for _, nets in chose.items()])  # the channels the groups give
            self.register_buffer(f"back_{e}", torch.argsort(order), persistent=False)

    def edge(self, e: int, x: torch.Tensor) -> torch.Tensor | None:
        """Edge e's output on ``x`` (B, K * C, H, W); None where every network's op is ``none``."""
        groups = self.groups[e]
        if len(groups) == 1:  # one op for every network
            op, _ = groups[0]
            return None if op == "none" else self.run(e, op, x)
        parts = []
        for op, _ in groups:
            idx: torch.Tensor = getattr(self, f"idx_{e}_{op}")
            if op == "none":
                parts.append(x.new_zeros(()).expand(len(x), len(idx), *x.shape[2:]))
            else:
                parts.append(self.run(e, op, x.index_select(1, idx)))
        # the groups' outputs side by side, then each network's channels back in their place
        return torch.cat(parts, 1).index_select(1, getattr(self, f"back_{e}"))

    def run(self, e: int, op: str, x: torch.Tensor) -> torch.Tensor:
        name = f"{e}_{op}"
        return self.ops[name](x) if name in self.ops else x  # no module: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        e = 0
        for srcs in self.nodes:
            total: torch.Tensor | None = None
            for src in srcs:
                y = self.edge(e, states[src])
                total = y if total is None else total if y is None else total + y
                e += 1
            states.append(x.new_zeros(x.shape) if total is None else total)
        return states[-1]


def channels(nets: Sequence[int], C: int) -> torch.Tensor:
    """The channels of networks ``nets`` in a map of C channels per network."""
    return torch.cat([torch.arange(k * C, (k + 1) * C) for k in nets])


class StackedNB201(nn.Module):
    """K NB201Networks (equal C, N, classes and input channels; any cells) as one module; forward returns the
    logits (B, K, classes)."""

    def __init__(self, nets: Sequence[NB201Network]):
        super().__init__()
        K = len(nets)
        self.K = K
        self.stem = stack_tree([n.stem for n in nets], shared_input=True)
        C = nets[0].classifier.in_features // 4  # the first stage's channels per network (the last has 4 C)
        layers: list[nn.Module] = []
        for i, block in enumerate(nets[0].cells):
            blocks = [n.cells[i] for n in nets]
            if isinstance(block, NB201Cell):
                layers.append(StackedCell(blocks, C))  # type: ignore[arg-type]
            else:  # the residual block between stages doubles the channels
                layers.append(stack_tree(blocks))
                C *= 2
        self.cells = nn.Sequential(*layers)
        self.lastact = stack_tree([n.lastact for n in nets])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = stack_tree([n.classifier for n in nets])
        self.sources = self._sources(nets)
        self._owners = {name: torch.cat([torch.full((s.rows,), s.net, dtype=torch.long) for s in srcs])
                        for name, srcs in self.sources.items()}
        self.load_from(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.pool(h).flatten(1))

    # ------------------------------------------------------------------------------------------ the networks' tensors

    def _sources(self, nets: Sequence[NB201Network]) -> dict[str, list[Source]]:
        """For every stacked parameter and buffer, the networks' tensors it concatenates, in order."""
        shapes = [{name: t.shape for name, t in n.state_dict().items()} for n in nets]
        out: dict[str, list[Source]] = {}
        for name, t in self.state_dict().items():
            parts = name.split(".")
            if parts[0] == "cells" and isinstance(self.cells[int(parts[1])], StackedCell):
                cell: StackedCell = self.cells[int(parts[1])]  # type: ignore[assignment]
                e, op_kind = parts[3].split("_", 1)
                nets_here = dict(cell.groups[int(e)])[op_kind]
                inner = ".".join([parts[0], parts[1], "ops", e, *parts[4:]])
            else:
                nets_here, inner = list(range(self.K)), name
            if t.dim() == 0:  # num_batches_tracked: one count, the same for every network trained together
                out[name] = [Source(k, inner, 0, 0) for k in nets_here]
                continue
            rows = shapes[nets_here[0]][inner][0]  # every network's tensor has as many rows
            out[name] = [Source(k, inner, j * rows, rows) for j, k in enumerate(nets_here)]
            assert sum(s.rows for s in out[name]) == t.shape[0], (name, t.shape)
        return out

    def split(self, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Stacked tensors by name (parameters, their gradients, momentum buffers) -> each network's by its names."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.K)]
        for name, t in tensors.items():
            for s in self.sources[name]:
                out[s.net][s.name] = t if t.dim() == 0 else t[s.start:s.start + s.rows]
        return out

    def join(self, per_net: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """split's inverse: each network's tensors by its names -> the stacked tensors by name (those the networks'
        dicts hold: a momentum buffer is a parameter's, never a statistic's)."""
        out = {}
        for name, srcs in self.sources.items():
            if any(s.name not in per_net[s.net] for s in srcs):
                continue
            parts = [per_net[s.net][s.name] for s in srcs]
            out[name] = parts[0].clone() if parts[0].dim() == 0 else torch.cat(parts)
        return out

    @torch.no_grad()
    def load_from(self, nets: Sequence[NB201Network]) -> None:
        state = self.join([n.state_dict() for n in nets])
        for name, t in self.state_dict().items():
            t.copy_(state[name])

    @torch.no_grad()
    def write_back(self, nets: Sequence[NB201Network]) -> None:
        """Copy the stack's weights and statistics into the K networks."""
        for net, state in zip(nets, self.split(self.state_dict()), strict=True):
            own = net.state_dict()
            for name, t in state.items():
                own[name].copy_(t)

    def owners(self, name: str, device: torch.device) -> torch.Tensor:
        """The network each row of stacked tensor ``name`` belongs to: (rows,) int64 on ``device``."""
        if self._owners[name].device != device:
            self._owners[name] = self._owners[name].to(device)
        return self._owners[name]


def clip_grad_norms(model: StackedNB201, max_norm: float) -> torch.Tensor:
    """Each network's gradients scaled as torch.nn.utils.clip_grad_norm_ scales them for that network alone; returns
    the K norms before clipping."""
    named = [(n, p, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return torch.zeros(model.K)
    sq = torch.zeros(model.K, dtype=torch.float32, device=named[0][1].device)
    for name, p, g in named:
        owners = model.owners(name, p.device)
        sq.index_add_(0, owners, g.detach().reshape(len(owners), -1).float().pow(2).sum(1))
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for name, p, g in named:
        g.mul_(coef[model.owners(name, p.device)].view(-1, *([1] * (g.dim() - 1))))
    return norms
