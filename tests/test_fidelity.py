"""The official code's gradient semantics, as switches: each GDAS straight-through rule against a reference written
here from the rule's formula in plain autograd (not through the project's edge code), and unsampled ops that keep
decaying and carrying momentum under search.unsampled_grads=zero."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.searching.bilevel import weight_step
from nas.searching.mixing import GdasSample, create_mixer, gumbel_like
from nas.searching.supernet import MixedEdge, build_supernet
from nas.space.spaces import get_space


def reference_alpha_grad(alpha: torch.Tensor, noise: torch.Tensor, tau: float, outs: list[torch.Tensor],
                         g: torch.Tensor, rule: str) -> torch.Tensor:
    """d <g, y> / d alpha for one edge, with y from the rule's formula and hard = one_hot - p.detach() + p."""
    a = alpha.detach().clone().requires_grad_(True)
    p = ((F.log_softmax(a, -1) + noise) / tau).softmax(-1)
    k = int(p.argmax())
    hard = F.one_hot(torch.tensor(k), a.numel()).to(a.dtype) - p.detach() + p
    y = outs[k] * hard[k]
    if rule == "all_ops":
        y = y + sum(hard[j] for j in range(a.numel()) if j != k)
    (y * g).sum().backward()
    return a.grad


@pytest.mark.parametrize("rule", ["all_ops", "sampled_op"])
def test_each_gdas_gradient_rule_matches_its_formula(rule: str) -> None:
    torch.manual_seed(0)
    space = get_space("nb201")
    edge = MixedEdge(space, index=0, C=4, stride=1)
    x = torch.randn(2, 4, 6, 6)
    g = torch.randn(2, 4, 6, 6)
    kinds_seen, differs = set(), False
    for trial in range(40):
        alpha = torch.randn(1, space.num_ops, requires_grad=True)
        torch.manual_seed(100 + trial)
        noise = gumbel_like(alpha)
        torch.manual_seed(100 + trial)
        sample = GdasSample(alpha, 0.7, gradient=rule)
        k = sample.index[0]
        if edge.kinds[k] == "zero":
            continue
        kinds_seen.add(edge.kinds[k])
        y = edge(x, sample)
        (y * g).sum().backward()
        with torch.no_grad():
            outs = [op(x) if kind != "zero" else torch.zeros_like(x) for op, kind in zip(edge.ops, edge.kinds)]
        expected = reference_alpha_grad(alpha[0], noise[0], 0.7, outs, g, rule)
        assert torch.allclose(alpha.grad[0], expected, rtol=1e-4, atol=1e-5), (rule, edge.kinds[k])
        other = reference_alpha_grad(alpha[0], noise[0], 0.7, outs, g, "sampled_op" if rule == "all_ops" else "all_ops")
        differs = differs or not torch.allclose(other, expected, rtol=1e-4, atol=1e-5)
    assert {"bn", "avgpool", "plain"} <= kinds_seen  # every fused path checked
    assert differs  # the two rules are told apart


def test_sampled_op_rule_gives_the_other_ops_no_gradient_through_hard() -> None:
    torch.manual_seed(1)
    alpha = torch.randn(3, 5, requires_grad=True)
    sample = GdasSample(alpha, 1.0, gradient="sampled_op")
    k = sample.index[0]
    sample.hard[0, k].backward(retain_graph=True)  # type: ignore[index]
    via_k = alpha.grad.clone()
    alpha.grad = None
    sample.hard[0, (k + 1) % 5].backward()  # type: ignore[index]
    assert (alpha.grad == 0).all() and via_k.abs().sum() > 0


@pytest.mark.parametrize("unsampled", ["none", "zero"])
def test_unsampled_ops_decay_and_keep_momentum_only_when_zeroed(unsampled: str) -> None:
    torch.manual_seed(0)
    model = build_supernet("nb201", num_classes=3, mixer=create_mixer("gdas"), C=4, layers=1)
    weights = model.weight_parameters()
    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    edge = next(m for m in model.modules() if isinstance(m, MixedEdge))
    conv = edge.ops[edge.kinds.index("bn")]  # a convolution of the first cell's first edge
    params = list(conv.parameters())

    def sample_only(k: int) -> None:  # every edge of the cell runs op k, the first edge's conv or not
        masks = torch.zeros(get_space("nb201").num_edges, 5, dtype=torch.bool)
        masks[:, k] = True
        model.op_mask = {"normal": masks}

    conv_k = edge.kinds.index("bn")
    sample_only(conv_k)
    weight_step(model, x, y, opt, weights, 5.0, unsampled=unsampled)  # the conv runs and is stepped
    before = [p.detach().clone() for p in params]
    sample_only(edge.kinds.index("plain") if "plain" in edge.kinds else 1)  # now it is not sampled
    weight_step(model, x, y, opt, weights, 5.0, unsampled=unsampled)
    moved = any(not torch.equal(p, b) for p, b in zip(params, before))
    assert moved == (unsampled == "zero")
    if unsampled == "zero":  # momentum and decay only: p <- p - lr (m buf + wd p)
        assert all(p.grad is not None and (p.grad == 0).all() for p in params)
