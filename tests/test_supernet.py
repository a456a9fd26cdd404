"""Supernet: one op per GDAS edge, forward value equal to the sampled child, gradient separation of the
bilevel steps, and the macro structure of both spaces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nas.mixing import GdasSample, create_mixer
from nas.ops import FactorizedReduce, ResBlock, Zero
from nas.search import alpha_step, weight_step
from nas.spaces import get_space
from nas.supernet import DartsSupernet, MixedEdge, NB201Supernet, SearchCell, Supernet, build_supernet

SMALL = {"darts": dict(C=4, layers=3), "nb201": dict(C=4, layers=1)}


def small(space: str, mixer: str = "gdas", seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return build_supernet(space, num_classes=5, mixer=create_mixer(mixer), **SMALL[space])  # type: ignore[arg-type]


def count_op_calls(model: nn.Module) -> dict[tuple[int, int], int]:
    """Hook every candidate op; returns a dict (edge module id, op index) -> calls, filled during forward."""
    calls: dict[tuple[int, int], int] = {}
    for edge in model.modules():
        if isinstance(edge, MixedEdge):
            for k, op in enumerate(edge.ops):
                def hook(m: nn.Module, inp: object, out: object, key: tuple[int, int] = (id(edge), k)) -> None:
                    calls[key] = calls.get(key, 0) + 1
                op.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_gdas_runs_exactly_one_op_per_edge(space: str) -> None:
    model = small(space)
    calls = count_op_calls(model)
    model.set_step("alpha")
    model(torch.randn(2, 3, 8, 8))
    num_edges = sum(1 for m in model.modules() if isinstance(m, MixedEdge))
    assert sum(calls.values()) == num_edges  # one op per edge, never more
    assert len(calls) == num_edges  # and on every edge


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_darts_mixer_runs_every_op(space: str) -> None:
    model = small(space, "darts")
    calls = count_op_calls(model)
    model(torch.randn(2, 3, 8, 8))
    num_edges = sum(1 for m in model.modules() if isinstance(m, MixedEdge))
    assert len(calls) == num_edges * model.space.num_ops


def test_gdas_edge_output_equals_the_sampled_op_output() -> None:
    torch.manual_seed(0)
    space = get_space("darts")
    edge = MixedEdge(space, index=3, C=4, stride=1)
    x = torch.randn(2, 4, 6, 6)
    alpha = torch.randn(space.num_edges, space.num_ops, requires_grad=True)
    for _ in range(20):
        sample = GdasSample(alpha, tau=1.0)
        k = sample.index[3]
        y = edge(x, sample)
        assert torch.equal(y, edge.ops[k](x))  # bit-identical to the op alone


def test_a_sampled_none_computes_no_convolution() -> None:
    space = get_space("darts")
    edge = MixedEdge(space, index=0, C=4, stride=2)
    calls = count_op_calls(nn.ModuleList([edge]))
    alpha = torch.full((space.num_edges, space.num_ops), -1e4)
    alpha[:, space.ops.index("none")] = 0.0  # none has all the mass
    y = edge(torch.randn(2, 4, 6, 6), GdasSample(alpha, tau=1.0))
    assert list(calls) == [(id(edge), space.ops.index("none"))]
    assert isinstance(edge.ops[0], Zero) and y.shape == (2, 4, 3, 3) and torch.count_nonzero(y) == 0


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_forward_value_is_the_same_with_and_without_the_alpha_graph(space: str) -> None:
    """The straight-through terms add exact zeros: the supernet output equals the plain child's output."""
    model = small(space)
    x = torch.randn(3, 3, 8, 8)
    model.set_step("alpha")
    torch.manual_seed(7)
    with_graph = model(x)
    model.set_step("weights")
    torch.manual_seed(7)
    plain = model(x)
    assert torch.equal(with_graph, plain)


@pytest.mark.parametrize("mixer", ["gdas", "darts"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_alpha_step_reaches_every_alpha_entry_and_no_weight(space: str, mixer: str) -> None:
    model = small(space, mixer)
    opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    alpha_step(model, x, y, opt)
    for name, a in model.alpha.items():
        assert a.grad is not None and torch.count_nonzero(a.grad) == a.numel(), name
    assert all(p.grad is None for p in model.weight_parameters())


@pytest.mark.parametrize("mixer", ["gdas", "darts"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_weight_step_computes_no_alpha_gradient(space: str, mixer: str) -> None:
    model = small(space, mixer)
    weights = model.weight_parameters()
    opt = torch.optim.SGD(weights, lr=0.1)
    before = {n: a.detach().clone() for n, a in model.alpha.items()}
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    weight_step(model, x, y, opt, weights, grad_clip=5.0)
    assert all(a.grad is None for a in model.arch_parameters())
    assert all(torch.equal(before[n], a) for n, a in model.alpha.items())
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in weights)


def test_alternating_steps_keep_gradients_separate() -> None:
    model = small("darts")
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.1)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    for _ in range(2):
        weight_step(model, x, y, w_opt, weights, 5.0)
        assert all(a.grad is None for a in model.arch_parameters())
        alpha_step(model, x, y, a_opt)
        assert all(p.grad is None for p in weights)  # zero_grad(set_to_none) + frozen weights


def test_grad_clip_bounds_the_weight_gradient_norm() -> None:
    model = small("nb201")
    weights = model.weight_parameters()
    opt = torch.optim.SGD(weights, lr=0.0)
    x, y = torch.randn(4, 3, 8, 8) * 100, torch.randint(0, 5, (4,))
    weight_step(model, x, y, opt, weights, grad_clip=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in weights if p.grad is not None]))
    assert norm <= 1e-3 * 1.001


def test_parameter_split_is_a_partition() -> None:
    model = small("darts")
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in model.parameters()}
    assert [tuple(a.shape) for a in model.arch_parameters()] == [(14, 8), (14, 8)]
    assert [tuple(a.shape) for a in small("nb201").arch_parameters()] == [(6, 5)]
    assert all(a.abs().max() < 0.01 for a in model.arch_parameters())  # 1e-3 * randn


def test_darts_supernet_layout() -> None:
    torch.manual_seed(0)
    model = build_supernet("darts", C=4, layers=8, num_classes=10, mixer=create_mixer("gdas"))
    assert isinstance(model, DartsSupernet)
    reductions = [i for i, cell in enumerate(model.cells) if cell.reduction]
    assert reductions == [2, 5]  # layers // 3 and 2 * layers // 3
    after = model.cells[3]
    assert isinstance(after.preprocess0, FactorizedReduce)  # the cell after a reduction
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)
    assert model.stem[0].out_channels == 3 * 4
    assert model.classifier.in_features == 4 * 4 * 4  # 4 nodes x C after two doublings


def test_nb201_supernet_layout() -> None:
    torch.manual_seed(0)
    model = build_supernet("nb201", C=4, layers=2, num_classes=10, mixer=create_mixer("darts"))
    assert isinstance(model, NB201Supernet)
    kinds = ["cell" if isinstance(c, SearchCell) else "res" for c in model.cells]
    assert kinds == ["cell", "cell", "res", "cell", "cell", "res", "cell", "cell"]
    assert all(isinstance(c, ResBlock) for c in model.cells if not isinstance(c, SearchCell))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert model.classifier.in_features == 16


def test_in_channels_and_custom_op_list() -> None:
    space = dataclasses.replace(get_space("darts"), ops=("skip_connect", "sep_conv_3x3"))
    model = build_supernet(space, C=4, layers=3, num_classes=3, mixer=create_mixer("gdas"), in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert tuple(model.alpha["normal"].shape) == (14, 2)
    g = model.genotype()
    assert {op for node in g.normal for op, _ in node} <= {"skip_connect", "sep_conv_3x3"}
