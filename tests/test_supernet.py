"""Supernet: one op per GDAS edge, forward value equal to the sampled child, gradient separation of the
bilevel steps, and the macro structure of both spaces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.searching.bilevel import alpha_step, weight_step
from nas.searching.mixing import GdasSample, create_mixer
from nas.searching.supernet import MixedEdge, SearchCell, Supernet, build_supernet
from nas.space.darts import DartsSearchCell, DartsSpace
from nas.space.nb201 import NB201Space
from nas.space.ops import FactorizedReduce, FixedReductionCell, ResBlock, Zero
from nas.space.spaces import get_space, search_space

SMALL = {"darts": dict(C=4, layers=3), "nb201": dict(C=4, layers=1)}


def small(space: str, mixer: str = "gdas", seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return build_supernet(space, num_classes=5, mixer=create_mixer(mixer), **SMALL[space])  # type: ignore[arg-type]


def count_op_calls(model: nn.Module) -> dict[tuple[int, int], int]:
    """Hook every candidate op (and, for GDAS's fused path, the op's final BN): returns a dict
    (edge module id, op index) -> forward calls, filled during forward."""
    calls: dict[tuple[int, int], int] = {}
    for edge in model.modules():
        if isinstance(edge, MixedEdge):
            for k, op in enumerate(edge.ops):
                def hook(m: nn.Module, inp: object, out: object, key: tuple[int, int] = (id(edge), k)) -> None:
                    calls[key] = calls.get(key, 0) + 1
                op.register_forward_hook(hook)
    return calls


def edges_by_cell_type(model: Supernet) -> list[tuple[str, MixedEdge]]:
    if isinstance(model.space, DartsSpace):
        return [("reduce" if c.reduction else "normal", e) for c in model.cells for e in c.dag.edges]
    return [("normal", e) for c in model.cells if isinstance(c, SearchCell) for e in c.edges]


@pytest.mark.parametrize("step", ["weights", "alpha"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_gdas_runs_exactly_the_sampled_op_on_each_edge(space: str, step: str) -> None:
    model = small(space)
    calls = count_op_calls(model)
    inner_calls: dict[tuple[int, int], int] = {}
    for _, edge in edges_by_cell_type(model):
        for k, op in enumerate(edge.ops):  # the fused path runs the op's layers, not op.forward itself
            for layer in list(op.modules())[1:]:
                layer.register_forward_hook(lambda m, i, o, key=(id(edge), k): inner_calls.update({key: 1}))
    model.set_step(step)
    sample = model.mixings()
    model.mixings = lambda: sample  # type: ignore[method-assign]
    model(torch.randn(2, 3, 8, 8))
    kinds = {id(edge): edge.kinds for _, edge in edges_by_cell_type(model)}
    # a node whose every edge sampled `none` takes its zeros from a Zero op (edge.zeros): no op of the network ran
    ran = {key: 1 for key in {**calls, **inner_calls} if kinds[key[0]][key[1]] != "zero"}
    expected = {(id(edge), sample[t].index[edge.index]): 1 for t, edge in edges_by_cell_type(model)
                if edge.kinds[sample[t].index[edge.index]] != "zero"}  # a sampled none runs nothing at all
    assert ran == expected  # the sampled op on every edge, and nothing else
    assert all(n == 1 for n in calls.values())  # never twice


@pytest.mark.parametrize("mixer", ["darts", "snas"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_mixture_mixers_run_every_op(space: str, mixer: str) -> None:
    model = small(space, mixer)
    calls = count_op_calls(model)
    model(torch.randn(2, 3, 8, 8))
    num_edges = sum(1 for m in model.modules() if isinstance(m, MixedEdge))
    assert len(calls) == num_edges * model.space.num_ops


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("space_name", ["darts", "nb201"])
def test_gdas_edge_output_equals_the_sampled_op_output(space_name: str, grad: bool) -> None:
    torch.manual_seed(0)
    space = get_space(space_name)
    edge = MixedEdge(space, index=3, C=4, stride=1)
    x = torch.randn(2, 4, 6, 6)
    alpha = torch.zeros(space.num_edges, space.num_ops, requires_grad=grad)
    seen = set()
    for _ in range(60):
        sample = GdasSample(alpha, tau=1.0)
        k = sample.index[3]
        seen.add(k)
        y = edge(x, sample)
        if edge.kinds[k] == "zero":  # nothing (weight step) or a 0-dim zero that carries alpha's gradient
            assert y is None if not grad else (y.dim() == 0 and y.item() == 0.0)
        else:
            assert torch.equal(y, edge.ops[k](x))  # bit-identical to the op alone
    assert seen == set(range(space.num_ops))


def test_a_sampled_none_costs_nothing() -> None:
    space = get_space("darts")
    cell = SearchCell(space, C=4, reduction=True)
    calls = count_op_calls(cell)
    alpha = torch.full((space.num_edges, space.num_ops), -1e4)
    alpha[:, space.ops.index("none")] = 0.0  # none has all the mass
    inputs = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)]
    out = cell(inputs, GdasSample(alpha, tau=1.0))
    assert isinstance(cell.edges[0].ops[0], Zero)
    assert out.shape == (2, 16, 3, 3) and torch.count_nonzero(out) == 0  # 4 nodes of zeros, at stride 2
    assert set(calls) <= {(id(e), 0) for e in cell.edges}  # only `none` ops ran: no convolution, no pooling


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
    assert isinstance(model.space, DartsSpace)
    assert all(isinstance(c, DartsSearchCell) for c in model.cells)
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
    assert isinstance(model.space, NB201Space)
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


def textbook_edge(self: GdasSample, e: int, x: torch.Tensor, edge: MixedEdge) -> torch.Tensor | None:
    """GDAS's edge as the paper's code writes it: out * hard[k] + the other hard weights (exact zeros)."""
    k = self.index[e]
    out = edge.ops[k](x)
    if self.hard is None:
        return out
    h = self.hard[e]
    return out * h[k] + (h.sum() - h[k])


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_memory_free_straight_through_equals_the_textbook_gdas_edge(space: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused BN, recompute and none paths give the textbook values and alpha gradients, and leave the same
    BN running statistics behind."""
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    results = []
    for edge_fn in (GdasSample.edge, textbook_edge):
        monkeypatch.setattr(GdasSample, "edge", edge_fn)
        model = small(space, seed=3)
        with torch.no_grad():  # a spread-out alpha, so every kind of op gets sampled somewhere
            for a in model.arch_parameters():
                a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(1)))
        model.set_step("alpha")
        torch.manual_seed(11)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
        results.append((logits.detach(), {t: a.grad.clone() for t, a in model.alpha.items()}, buffers))
    (fast_logits, fast_grads, fast_buffers), (ref_logits, ref_grads, ref_buffers) = results
    assert torch.equal(fast_logits, ref_logits)
    for t in ref_grads:
        assert torch.allclose(fast_grads[t], ref_grads[t], rtol=1e-4, atol=1e-6), t
    assert fast_buffers.keys() == ref_buffers.keys()
    assert all(torch.equal(fast_buffers[k], ref_buffers[k]) for k in ref_buffers)


def test_the_gdas_macro_network_is_the_official_six_cell_one() -> None:
    torch.manual_seed(0)
    gdas = build_supernet("darts", num_classes=5, mixer=create_mixer("gdas"), C=4, layers=6, macro="gdas")
    darts = build_supernet("darts", num_classes=5, mixer=create_mixer("gdas"), C=4, layers=6)
    assert isinstance(gdas.space, DartsSpace) and gdas.space.macro == "gdas"
    assert [c.reduction for c in gdas.cells] == [False, False, True, False, True, False]  # N=2: 2, R, 1, R, 1
    assert isinstance(gdas.lastact, nn.Sequential) and isinstance(gdas.lastact[0], nn.BatchNorm2d)
    assert isinstance(darts.lastact, nn.Identity)

    def pool_bns(model: Supernet) -> int:  # BatchNorms after a pooling op inside the mixed edges
        return sum(1 for m in model.modules() if isinstance(m, MixedEdge)
                   for name, op in zip(model.space.ops, m.ops) if "pool" in name and isinstance(op, nn.Sequential)
                   and any(isinstance(x, nn.BatchNorm2d) for x in op))

    assert pool_bns(gdas) == 0 and pool_bns(darts) > 0
    assert gdas(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_gdas_frc_searches_only_the_normal_cell_around_fixed_reduction_cells() -> None:
    torch.manual_seed(0)
    space = search_space("darts", macro="gdas_frc")
    model = build_supernet(space, num_classes=5, mixer=create_mixer("gdas"), C=4, layers=6, macro="gdas_frc")
    assert list(model.alpha) == ["normal"]  # the reduction cell has no alpha
    fixed = [c for c in model.cells if isinstance(c, FixedReductionCell)]
    assert [c.reduction for c in model.cells] == [False, False, True, False, True, False] and len(fixed) == 2
    assert not any(isinstance(m, MixedEdge) for c in fixed for m in c.modules())
    assert all(not m.affine for c in fixed for m in c.modules() if isinstance(m, nn.BatchNorm2d))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    model.set_step("alpha")
    nn.functional.cross_entropy(model(x), y).backward()
    assert model.alpha["normal"].grad is not None and model.alpha["normal"].grad.abs().sum() > 0
    model.set_step("weights")
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for c in fixed for p in c.parameters())  # the fixed cells train with the weights
    g = model.genotype("gdas")
    assert g.reduce_fixed and g.reduce == () and len(g.normal) == 4 and list(g.cells()) == ["normal"]
    with pytest.raises(ValueError, match="searches in its darts network, not gdas_frc"):
        build_supernet(get_space("darts"), num_classes=5, mixer=create_mixer("gdas"), C=4, layers=6,
                       macro="gdas_frc")


@pytest.mark.parametrize("mixer", ["gdas", "darts"])
def test_batchnorm_without_running_statistics_searches_the_same(tmp_path: Path, mixer: str) -> None:
    """model.bn_stats=false (NATS-Bench's setting) drops every BatchNorm's running statistics; a search normalises by
    the batch in training mode either way, so alpha and the cell come out bit for bit the same."""
    from nas.config import SearchConfig, load_config
    from nas.searching.bilevel import drop_running_stats, run_search

    common = [f"search.mixer={mixer}", "search.epochs=2", "data.synthetic.train=64", "data.image_size=8",
              "data.batch_size=16", "model.space=nb201", "model.C=4", "model.layers=1", "run.tensorboard=false"]
    runs = [run_search(load_config(SearchConfig, None, [*common, f"model.bn_stats={bn}", f"run.dir={tmp_path / bn}"]),
                       quiet=True) for bn in ("true", "false")]
    for name in ("alpha.jsonl", "genotype.json"):
        assert (runs[0] / name).read_text() == (runs[1] / name).read_text()
    model = build_supernet("nb201", C=4, layers=1, num_classes=3, mixer=create_mixer(mixer))
    drop_running_stats(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_mean is None and not m.track_running_stats for m in bns)
    x = torch.randn(6, 3, 8, 8)
    torch.manual_seed(1)  # the same sample in both passes
    train_out = model.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(model.eval()(x), train_out)  # evaluation mode normalises by the batch too
