"""Candidate ops: every registered op at stride 1 and 2 (shape, gradient), their structure, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.config import UserError
from nas.space.darts import DARTS_OPS
from nas.space.nb201 import NB201_OPS
from nas.space.ops import (
    DilConv,
    FactorizedReduce,
    ReLUConvBN,
    ResBlock,
    SepConv,
    Zero,
    create_op,
    create_search_op,
    is_parameter_free,
    list_ops,
    register_op,
)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list_ops())
@pytest.mark.parametrize("C_in,C_out", [(8, 8), (4, 8)])
def test_every_op_shape_and_gradient(name: str, stride: int, C_in: int, C_out: int) -> None:
    torch.manual_seed(0)
    op = create_op(name, C_in, C_out, stride)
    x = torch.randn(2, C_in, 9, 9, requires_grad=True)  # odd size: stride 2 must give ceil(9 / 2) = 5
    y = op(x)
    side = 5 if stride == 2 else 9
    assert y.shape == (2, C_out, side, side)
    if name == "none":
        assert not y.requires_grad and torch.count_nonzero(y) == 0
        return
    y.square().sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname


def test_both_op_lists_are_registered() -> None:
    assert set(DARTS_OPS) <= set(list_ops())
    assert set(NB201_OPS) <= set(list_ops())
    assert len(DARTS_OPS) == 8 and len(NB201_OPS) == 5


def test_op_structure_follows_the_papers() -> None:
    sep = create_op("sep_conv_3x3", 16, 16, 1)
    assert isinstance(sep, SepConv) and len(sep) == 2  # two stacked separable blocks
    assert all(isinstance(block, DilConv) for block in sep)
    assert isinstance(sep[0][0], nn.ReLU) and isinstance(sep[0][-1], nn.BatchNorm2d)  # ReLU-Conv-BN order
    dil = create_op("dil_conv_5x5", 16, 16, 1)
    assert isinstance(dil, DilConv)
    depthwise = [m for m in dil if isinstance(m, nn.Conv2d)][0]
    assert depthwise.dilation == (2, 2) and depthwise.groups == 16 and depthwise.kernel_size == (5, 5)
    assert isinstance(create_op("skip_connect", 16, 16, 2), FactorizedReduce)
    assert isinstance(create_op("skip_connect", 16, 16, 1), nn.Identity)
    assert isinstance(create_op("nor_conv_3x3", 16, 16, 1), ReLUConvBN)
    assert isinstance(create_op("none", 16, 16, 2), Zero)
    # DARTS' count for a sep_conv_3x3 at C=16: 2 x (3*3*16 depthwise + 16*16 pointwise) + 2 BN x 2 x 16
    assert sum(p.numel() for p in sep.parameters()) == 2 * (9 * 16 + 16 * 16) + 2 * 2 * 16
    avg = create_op("avg_pool_3x3", 8, 8, 1)
    assert avg[-1].count_include_pad is False


def test_search_ops_have_no_affine_parameters_and_pools_get_bn_in_darts() -> None:
    for name in DARTS_OPS:
        op = create_search_op(name, 8, 1, pool_bn=True)
        bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(not bn.affine for bn in bns)
        if "pool" in name:
            assert isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_search_op("avg_pool_3x3", 8, 1, pool_bn=False)
                   .modules())


def test_none_costs_nothing() -> None:
    op = create_op("none", 8, 8, 2)
    assert sum(1 for _ in op.parameters()) == 0
    x = torch.full((1, 8, 4, 4), float("nan"))
    assert torch.count_nonzero(op(x)) == 0  # never reads the input's values


def test_resblock_halves_resolution() -> None:
    block = ResBlock(8, 16, stride=2)
    assert block(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)


def test_unknown_op_lists_choices_and_suggests() -> None:
    with pytest.raises(UserError, match=r"unknown op 'sep_conv_3x4' \(did you mean 'sep_conv_3x3'\?\); valid: "):
        create_op("sep_conv_3x4", 8, 8, 1)
    assert issubclass(UserError, ValueError)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_op("sep_conv_3x3")(lambda C_in, C_out, s, a: nn.Identity())


def test_classifying_an_op_leaves_the_seeded_stream_alone() -> None:
    """is_parameter_free builds a probe op: it must not draw from the global generator, or a supernet built after
    other code (a warm cache) would start from different weights than one built in a fresh process."""
    is_parameter_free.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert not is_parameter_free("sep_conv_5x5")
    assert torch.equal(torch.rand(4), expected)
