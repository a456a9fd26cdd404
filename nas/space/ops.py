"""Candidate operations of the DARTS (Liu et al., ICLR 2019) and NAS-Bench-201 (Dong & Yang, ICLR 2020)
spaces, in one registry: ``create_op(name, C_in, C_out, stride, affine)``.

Every op maps (N, C_in, H, W) to (N, C_out, ceil(H / stride), ceil(W / stride)). Convolutions follow the
papers' ReLU-Conv-BN order; a sep_conv is two stacked depthwise-separable blocks, a dil_conv one dilated
separable block, and skip_connect at stride 2 is a factorized reduce.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

import torch
from torch import nn

from nas.errors import UserError

OpFactory = Callable[[int, int, int, bool], nn.Module]
OPS: dict[str, OpFactory] = {}


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    def add(factory: OpFactory) -> OpFactory:
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = factory
        return factory
    return add


def list_ops() -> list[str]:
    return sorted(OPS)


def check_op_name(name: str, valid: list[str] | None = None, where: str = "") -> None:
    """Raise UserError for a name not in ``valid`` (default: every registered op), suggesting the nearest."""
    valid = list_ops() if valid is None else valid
    if name not in valid:
        near = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        if name in OPS and name != "none":  # registered, but not for this space (a DARTS cell keeps no none)
            raise UserError(f"op {name!r}{where} is another space's op{hint}; valid: {', '.join(valid)}")
        raise UserError(f"unknown op {name!r}{where}{hint}; valid: {', '.join(valid)}")


@functools.cache
def is_parameter_free(name: str) -> bool:
    """Whether op ``name`` learns nothing where a cell keeps its size (stride 1, C_in == C_out): none, skip_connect
    and the poolings. A cell of such edges only mixes and resamples its inputs."""
    with torch.random.fork_rng(devices=[]):  # building the probe must not move the seeded stream a network draws from
        return sum(p.numel() for p in create_op(name, 2, 2, 1).parameters()) == 0


def create_op(name: str, C_in: int, C_out: int, stride: int, affine: bool = True) -> nn.Module:
    """Build candidate op ``name``; an unknown name raises UserError listing the registered ones."""
    check_op_name(name)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return OPS[name](C_in, C_out, stride, affine)


# ---------------------------------------------------------------------------------------------- blocks

class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN: one separable block."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two separable blocks; the first carries the stride, the second changes the channels."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class Conv7x1x1x7(nn.Sequential):
    """ReLU, 1x7 then 7x1 conv, BN (used by published NASNet-space genotypes such as AmoebaNet)."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C_in, C_out, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convs, the second shifted by one pixel.

    The input is padded on the right and bottom first so odd sizes work (both halves give ceil(H/2)).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.body(x))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the final BN."""
        x = self.relu(x)
        if x.shape[-2] % 2 or x.shape[-1] % 2:  # odd: pad so both halves give ceil(H / 2)
            shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        else:  # even: the shifted view needs no copy
            shifted = x[:, :, 1:, 1:]
        return torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1)


class Zero(nn.Module):
    """The `none` op: zeros of the output shape, computed without touching the input's values."""

    def __init__(self, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)


class Pool(nn.Sequential):
    """3x3 max or average pooling; a 1x1 ReLU-Conv-BN first when the channels change (NAS-Bench-201)."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, affine: bool = True):
        layers: list[nn.Module] = []
        if C_in != C_out:
            layers.append(ReLUConvBN(C_in, C_out, 1, 1, 0, affine))
        if kind == "max":
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        else:
            layers.append(nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        super().__init__(*layers)


# ---------------------------------------------------------------------------------------------- registry

@register_op("none")
def _none(C_in: int, C_out: int, stride: int, affine: bool) -> nn.Module:
    return Zero(C_out, stride)


@register_op("skip_connect")
def _skip(C_in: int, C_out: int, stride: int, affine: bool) -> nn.Module:
    if stride == 2:
        return FactorizedReduce(C_in, C_out, affine)
    if C_in != C_out:
        return ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
    return nn.Identity()


@register_op("max_pool_3x3")
def _max_pool(C_in: int, C_out: int, stride: int, affine: bool) -> nn.Module:
    return Pool("max", C_in, C_out, stride, affine)


@register_op("avg_pool_3x3")
def _avg_pool(C_in: int, C_out: int, stride: int, affine: bool) -> nn.Module:
    return Pool("avg", C_in, C_out, stride, affine)


def _register_sep(k: int) -> None:
    register_op(f"sep_conv_{k}x{k}")(lambda C_in, C_out, s, a: SepConv(C_in, C_out, k, s, k // 2, a))


def _register_dil(k: int) -> None:  # dilation 2: padding keeps the size
    register_op(f"dil_conv_{k}x{k}")(lambda C_in, C_out, s, a: DilConv(C_in, C_out, k, s, k - 1, 2, a))


def _register_nor(k: int) -> None:
    register_op(f"nor_conv_{k}x{k}")(lambda C_in, C_out, s, a: ReLUConvBN(C_in, C_out, k, s, k // 2, a))


for _k in (3, 5, 7):
    _register_sep(_k)
for _k in (3, 5):
    _register_dil(_k)
for _k in (1, 3):
    _register_nor(_k)
register_op("conv_7x1_1x7")(lambda C_in, C_out, s, a: Conv7x1x1x7(C_in, C_out, s, a))
BUILTIN_OPS = frozenset(OPS)  # the ops this module defines; register_op adds a user's own


def create_search_op(name: str, C: int, stride: int, *, pool_bn: bool) -> nn.Module:
    """A candidate op inside a supernet edge: no affine BN parameters, and optionally (the DARTS search
    code) a non-affine BN after a pooling op so parameter-free ops come out on the scale of the convs."""
    op = create_op(name, C, C, stride, affine=False)
    if pool_bn and isinstance(op, Pool):
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


class ResBlock(nn.Module):
    """NAS-Bench-201's reduction block between stages: two 3x3 ReLU-Conv-BN (the first with stride 2) plus
    a shortcut of 2x2 average pooling and a 1x1 conv."""

    def __init__(self, C_in: int, C_out: int, stride: int = 2, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        self.shortcut: nn.Module
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.shortcut = ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def drop_path(x: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Zero whole samples with probability p and scale the survivors by 1 / (1 - p)."""
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * (mask / keep)


class FixedReductionCell(nn.Module):
    """GDAS-FRC's hand-designed reduction cell (Dong & Yang, CVPR 2019, Sec. 4.1 and Fig. 3), searched around and
    retrained alike: after the usual 1x1 (or factorized-reduce) preprocessing of both inputs to C channels, each
    input goes through a grouped 1x3-then-3x1 stride-2 conv block and through a 3x3 stride-2 max pooling with BN;
    the four results are concatenated (4 * C channels). ``affine=False`` is the search network's version, whose
    convs then carry a bias as in the official code. C must be a multiple of the 8 conv groups."""

    reduction = True
    GROUPS = 8

    def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool = True):
        super().__init__()
        if C % self.GROUPS:
            raise UserError(f"the fixed reduction cell needs channels divisible by {self.GROUPS}, got {C}; use a "
                            "model.C divisible by 4")
        self.preprocess0: nn.Module = (FactorizedReduce(C_pp, C, affine) if reduction_prev
                                       else ReLUConvBN(C_pp, C, 1, 1, 0, affine))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine)
        self.convs = nn.ModuleList(self._conv_branch(C, affine) for _ in range(2))
        self.pools = nn.ModuleList(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.BatchNorm2d(C, affine=affine))
                                   for _ in range(2))

    @classmethod
    def _conv_branch(cls, C: int, affine: bool) -> nn.Sequential:
        g, bias = cls.GROUPS, not affine
        return nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 3), stride=(1, 2), padding=(0, 1), groups=g, bias=bias),
            nn.Conv2d(C, C, (3, 1), stride=(2, 1), padding=(1, 0), groups=g, bias=bias),
            nn.BatchNorm2d(C, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 1, bias=bias),
            nn.BatchNorm2d(C, affine=affine),
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float | torch.Tensor | None = None
                ) -> torch.Tensor:
        """``drop_prob``: drop-path probability for each of the four branches in training (None: no drop-path)."""
        inputs = (self.preprocess0(s0), self.preprocess1(s1))
        out = [conv(x) for conv, x in zip(self.convs, inputs, strict=True)]
        out += [pool(x) for pool, x in zip(self.pools, inputs, strict=True)]
        if self.training and drop_prob is not None:
            out = [drop_path(h, drop_prob) for h in out]
        return torch.cat(out, dim=1)


def split_final_bn(op: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.BatchNorm2d] | None:
    """(everything before the op's final non-affine BatchNorm, that BN), or None if the op does not end in one.

    GDAS uses it to fuse the final BN with the straight-through gradient, so that an edge's output need not be
    kept for the backward pass (the BN's input is kept anyway).
    """
    if isinstance(op, FactorizedReduce):
        return (op.body, op.bn) if not op.bn.affine else None
    if isinstance(op, nn.Sequential) and len(op) > 0:
        last = op[-1]
        head = nn.Sequential(*list(op)[:-1])  # the same modules, so the same parameters
        if isinstance(last, nn.BatchNorm2d):
            return (head, last) if not last.affine and len(op) > 1 else None
        inner = split_final_bn(last)
        if inner is not None:
            inner_body, bn = inner
            return (lambda x: inner_body(head(x))), bn
    return None


def sole_avg_pool(op: nn.Module) -> nn.AvgPool2d | None:
    """The AvgPool2d an op consists of (a pooling op without BN or channel change), else None."""
    if isinstance(op, Pool) and len(op) == 1 and isinstance(op[0], nn.AvgPool2d):
        return op[0]
    return None
