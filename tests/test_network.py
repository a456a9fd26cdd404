"""Discrete networks: every published genotype builds and trains; parameter counts equal the DARTS code's (checked
against an independent count written from the DARTS definitions); drop-path; the auxiliary head; FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.config import UserError
from nas.space.genotype import PUBLISHED, Genotype, parse_genotype, published_genotype
from nas.space.network import DartsCell, DartsNetwork, build_network, count_flops, count_parameters, drop_path
from nas.space.ops import FixedReductionCell


def analytic_darts_params(g: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10) -> int:
    """Parameters of the DARTS NetworkCIFAR for g, by formula (auxiliary head excluded), as a second,
    independent implementation of what the DARTS code builds."""
    def relu_conv_bn(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + 2 * c_out

    def factorized_reduce(c_in: int, c_out: int) -> int:
        return 2 * c_in * (c_out // 2) + 2 * c_out

    def op(name: str, c: int, stride: int) -> int:
        if name in ("max_pool_3x3", "avg_pool_3x3"):
            return 0
        if name == "skip_connect":
            return factorized_reduce(c, c) if stride == 2 else 0
        k = int(name[-1])
        if name.startswith("sep_conv"):
            return 2 * (c * k * k + c * c + 2 * c)
        if name.startswith("dil_conv"):
            return c * k * k + c * c + 2 * c
        assert name == "conv_7x1_1x7"
        return 2 * 7 * c * c + 2 * c

    total = 3 * 9 * (3 * C) + 2 * (3 * C)  # stem: 3x3 conv from 3 channels + BN
    c_pp, c_p, c = 3 * C, 3 * C, C
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        total += factorized_reduce(c_pp, c) if reduction_prev else relu_conv_bn(c_pp, c, 1)
        total += relu_conv_bn(c_p, c, 1)
        if reduction and g.reduce_fixed:  # GDAS-FRC's cell: per input a grouped 1x3 + 3x1 conv, BN, 1x1 conv, BN,
            total += 2 * (2 * 3 * c * (c // 8) + 2 * c + c * c + 2 * c)  # and a max pooling with BN
            total += 2 * 2 * c
            width = 4
        else:
            nodes, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
            total += sum(op(name, c, 2 if reduction and src < 2 else 1) for node in nodes for name, src in node)
            width = len(concat)
        reduction_prev = reduction
        c_pp, c_p = c_p, width * c
    return total + c_p * num_classes + num_classes


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_genotype_builds_trains_and_tests_at_small_size(name: str) -> None:
    torch.manual_seed(0)
    g = published_genotype(name)
    model = build_network(g, C=4, layers=5, num_classes=7, auxiliary=True)
    model.drop_path_prob = 0.2
    x = torch.randn(3, 3, 16, 16)
    logits, aux = model(x)
    assert logits.shape == (3, 7) and aux is not None and aux.shape == (3, 7)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    logits, aux = model(x)
    assert aux is None and logits.shape == (3, 7)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_at_paper_size_matches_the_darts_definition(name: str) -> None:
    g = published_genotype(name)
    model = build_network(g, C=36, layers=20, num_classes=10, auxiliary=True)
    assert count_parameters(model) == analytic_darts_params(g)


def test_parameter_counts_match_the_published_figures() -> None:
    def millions(name: str) -> float:
        model = build_network(published_genotype(name), C=36, layers=20, num_classes=10, auxiliary=True)
        return count_parameters(model) / 1e6

    assert millions("DARTS_V2") * 1e6 == 3_349_342  # the DARTS code logs "param size = 3.349342MB"
    assert round(millions("DARTS_V2"), 1) == 3.3  # as the papers round them
    assert round(millions("GDAS_V1"), 1) == 3.4
    assert round(millions("GDAS_F1"), 1) == 2.5  # GDAS (FRC) in the paper's Table 1
    assert round(millions("PC_DARTS"), 1) == 3.6


def test_the_auxiliary_head_is_not_counted() -> None:
    g = published_genotype("DARTS_V2")
    with_head = build_network(g, C=8, layers=8, num_classes=10, auxiliary=True)
    without = build_network(g, C=8, layers=8, num_classes=10, auxiliary=False)
    assert count_parameters(with_head) == count_parameters(without)
    assert sum(p.numel() for p in with_head.parameters()) > count_parameters(with_head)


def test_nb201_network_parameters() -> None:
    def nb201(cell: str) -> int:
        return count_parameters(build_network(parse_genotype(cell), C=16, layers=5, num_classes=10))

    convs = nb201("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    empty = nb201("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    per_cell = sum(6 * (9 * c * c + 2 * c) for c in (16, 32, 64)) * 5  # 6 ReLU-Conv-BN 3x3 in each of 5 cells
    assert convs - empty == per_cell
    assert (convs, empty) == (1_531_546, 73_306)  # NAS-Bench-201's largest and smallest networks


def test_drop_path_at_zero_is_the_identity() -> None:
    x = torch.randn(64, 4, 3, 3)
    assert torch.equal(drop_path(x, 0.0), x)


def test_drop_path_drops_samples_with_frequency_p() -> None:
    torch.manual_seed(0)
    n, p = 20_000, 0.3
    y = drop_path(torch.ones(n, 2, 2, 2), p)
    dropped = (y.flatten(1) == 0).all(1)
    kept = ~dropped
    assert ((y.flatten(1) == 0).all(1) | (y.flatten(1) == 1 / (1 - p)).all(1)).all()  # whole samples, rescaled
    rate = dropped.float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - p) < 5 * sigma
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_drop_path_spares_identity_ops_and_evaluation() -> None:
    torch.manual_seed(0)
    skips = ((("skip_connect", 0), ("skip_connect", 1)),) * 2
    cell = DartsCell(skips, (2, 3), 4, 4, 4, reduction=False, reduction_prev=False)
    s0, s1 = torch.randn(8, 4, 5, 5), torch.randn(8, 4, 5, 5)
    assert torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))  # identities are never dropped
    convs = ((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),) * 2
    cell = DartsCell(convs, (2, 3), 4, 4, 4, reduction=False, reduction_prev=False)
    assert not torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))
    cell.eval()
    assert torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))  # no drop-path at test time


def test_auxiliary_head_only_in_training_and_only_when_asked() -> None:
    g = published_genotype("GDAS_V1")
    model = build_network(g, C=4, layers=8, num_classes=5, auxiliary=True)
    assert isinstance(model, DartsNetwork) and model.aux_index == 5
    x = torch.randn(2, 3, 32, 32)  # the designed 8x8 input to the head
    assert model(x)[1].shape == (2, 5)
    model.eval()
    assert model(x)[1] is None
    plain = build_network(g, C=4, layers=8, num_classes=5, auxiliary=False)
    assert plain(x)[1] is None and plain.auxiliary_head is None


def test_flops_count_multiply_adds() -> None:
    class OneConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.conv(x), None

    assert count_flops(OneConv(), 3, 8) == 8 * 3 * 9 * 8 * 8  # one multiply-add per weight per output pixel
    small = build_network(published_genotype("DARTS_V2"), C=8, layers=5, num_classes=10)
    big = build_network(published_genotype("DARTS_V2"), C=16, layers=5, num_classes=10)
    assert 2 * count_flops(small, 3, 16) < count_flops(big, 3, 16)


def test_build_network_rejects_what_a_space_lacks() -> None:
    nb = parse_genotype("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|nor_conv_1x1~2|")
    with pytest.raises(UserError, match="an auxiliary head exists only there"):
        build_network(nb, C=4, layers=1, num_classes=10, auxiliary=True)
    with pytest.raises(UserError, match="too few"):
        build_network(published_genotype("DARTS_V2"), C=4, layers=2, num_classes=10)


def test_grayscale_input() -> None:
    model = build_network(published_genotype("PDARTS"), C=4, layers=3, num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28))[0].shape == (2, 10)


def test_a_fixed_reduction_genotype_builds_the_fixed_cell_at_both_reductions() -> None:
    g = published_genotype("GDAS_F1")
    model = build_network(g, C=8, layers=6, num_classes=10, auxiliary=True)
    assert isinstance(model, DartsNetwork)
    fixed = [i for i, c in enumerate(model.cells) if isinstance(c, FixedReductionCell)]
    assert fixed == [2, 4] and all(isinstance(model.cells[i], DartsCell) for i in (0, 1, 3, 5))
    x = torch.randn(4, 3, 16, 16)
    cell_in = {}
    model.cells[2].register_forward_hook(lambda m, inp, out: cell_in.update(shape=out.shape))
    model.drop_path_prob = 0.3
    logits, aux = model(x)
    assert cell_in["shape"] == (4, 4 * 16, 8, 8)  # 4 branches of 2C channels at half the resolution
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_fixed_reduction_cell_drops_each_branch_only_in_training() -> None:
    torch.manual_seed(0)
    cell = FixedReductionCell(8, 8, 8, reduction_prev=False)
    s = torch.randn(64, 8, 6, 6)
    out = cell(s, s, drop_prob=0.5)
    dropped = (out.view(64, 4, 8, 3, 3).abs().sum((2, 3, 4)) == 0).float().mean()
    assert 0.3 < float(dropped) < 0.7  # each branch of each sample dropped about half the time
    cell.eval()
    assert torch.equal(cell(s, s, drop_prob=0.5), cell(s, s))
    with pytest.raises(UserError, match="divisible by 8, got 12"):
        FixedReductionCell(8, 8, 12, reduction_prev=False)
