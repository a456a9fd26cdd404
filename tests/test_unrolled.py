"""Second-order DARTS: the finite-difference alpha gradient against an exact one by double backward, xi = 0 is the
first-order gradient, the weights come back bit for bit, and a search runs with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nas.cli import search_main
from nas.config import ConfigError, SearchConfig, load_config
from nas.searching.mixing import create_mixer
from nas.searching.supernet import Supernet, build_supernet
from nas.searching.unrolled import unrolled_alpha_backward

XI, MOMENTUM, DECAY = 0.05, 0.9, 3e-4


def setup(seed: int = 0) -> tuple[Supernet, torch.optim.SGD, tuple, tuple]:
    torch.manual_seed(seed)
    model = build_supernet("nb201", num_classes=3, mixer=create_mixer("darts"), C=4, layers=1).double()
    # A smooth stand-in for ReLU: finite differences of *gradients* jump wherever a ReLU input crosses 0, and on 8
    # images some always do; the check is of the formula and its code, which do not depend on the activation.
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.GELU())
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 0.5)  # away from uniform, so alpha's gradient is not degenerate
    train = (torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    valid = (torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    opt = torch.optim.SGD(model.weight_parameters(), lr=XI, momentum=MOMENTUM, weight_decay=DECAY)
    model.set_step("weights")  # one real step, so that the momentum buffers are not empty
    F.cross_entropy(model(valid[0]), valid[1]).backward()
    opt.step()
    return model, opt, train, valid


def exact_gradient(model: Supernet, opt: torch.optim.SGD, train: tuple, valid: tuple, xi: float) -> list:
    """d/d alpha of L_val(w - xi (momentum buf + grad_w L_train(w, alpha) + decay w), alpha), by plain autograd."""
    names = [n for n, _ in model.named_parameters() if not n.startswith("alpha.")]
    weights, alphas = model.weight_parameters(), model.arch_parameters()
    model.set_step("both")
    grads = torch.autograd.grad(F.cross_entropy(model(train[0]), train[1]), weights, create_graph=True)
    ahead = {n: w - xi * (MOMENTUM * opt.state[w]["momentum_buffer"] + g + DECAY * w)
             for n, w, g in zip(names, weights, grads, strict=True)}
    loss = F.cross_entropy(functional_call(model, ahead, (valid[0],)), valid[1])
    return list(torch.autograd.grad(loss, alphas))


def relative_error(a: list, b: list) -> float:
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))
    den = sum((y ** 2).sum() for y in b)
    return float((num / den).sqrt())


def test_finite_differences_match_the_exact_second_order_gradient() -> None:
    model, opt, train, valid = setup()
    exact = exact_gradient(model, opt, train, valid, XI)
    model.set_step("none")
    unrolled_alpha_backward(model, train, valid, opt, model.weight_parameters(), XI)
    approx = [a.grad for a in model.arch_parameters()]
    first = exact_gradient(model, opt, train, valid, 0.0)
    assert relative_error(approx, exact) < 1e-2
    assert relative_error(first, exact) > 1e-2  # the second-order term is there to be matched


def test_xi_zero_is_the_first_order_gradient_and_the_weights_come_back() -> None:
    model, opt, train, valid = setup(1)
    before = [w.detach().clone() for w in model.weight_parameters()]
    model.set_step("alpha")
    first = torch.autograd.grad(F.cross_entropy(model(valid[0]), valid[1]), model.arch_parameters())
    unrolled_alpha_backward(model, train, valid, opt, model.weight_parameters(), 0.0)
    for a, g in zip(model.arch_parameters(), first, strict=True):
        assert torch.allclose(a.grad, g, rtol=1e-10, atol=1e-12)
    unrolled_alpha_backward(model, train, valid, opt, model.weight_parameters(), XI)
    assert all(torch.equal(w, b) for w, b in zip(model.weight_parameters(), before, strict=True))
    assert all(w.grad is None for w in model.weight_parameters())  # the weight optimizer sees nothing of it


def test_a_second_order_search_runs_and_bad_combinations_are_refused(tmp_path: Path) -> None:
    tiny = ["search.epochs=1", "data.synthetic.train=64", "data.synthetic.test=16", "data.image_size=8",
            "data.batch_size=16", "model.space=nb201", "model.C=4", "model.layers=1", "run.tensorboard=false"]
    assert search_main([*tiny, "search.mixer=darts", "search.unrolled=true", f"run.dir={tmp_path / 'r'}"]) == 0
    assert (tmp_path / "r" / "genotype.json").exists()
    with pytest.raises(ConfigError, match="search.unrolled=true needs search.mixer=darts"):
        load_config(SearchConfig, None, ["search.unrolled=true"]).check()
    with pytest.raises(ConfigError, match="search.unrolled=true runs in float32 only"):
        load_config(SearchConfig, None, ["search.mixer=darts", "search.unrolled=true", "run.amp=bf16"]).check()
