"""GDAS, DARTS and SNAS mixing: exact one-hot forward, straight-through gradient, sampling statistics, tau."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nas.searching import mixing
from nas.searching.mixing import (
    DARTS,
    GDAS,
    SNAS,
    DartsWeights,
    GdasSample,
    SnasWeights,
    create_mixer,
    gumbel_like,
    gumbel_softmax_hard,
    tau_at,
)


def test_gumbel_noise_is_finite_even_at_the_ends_of_the_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    def extreme(shape, dtype=None, device=None, generator=None):  # a uniform sampler may return 0 and nearly 1
        return torch.tensor([0.0, 1.0 - 2 ** -24, 0.5, 1.0], dtype=dtype).expand(*shape).clone()

    monkeypatch.setattr(mixing.torch, "rand", extreme)
    g = gumbel_like(torch.zeros(3, 4))
    assert torch.isfinite(g).all()


def test_gumbel_noise_is_finite_over_many_draws() -> None:
    torch.manual_seed(0)
    g = gumbel_like(torch.zeros(1000, 1000))
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni: the mean of Gumbel(0, 1)


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
def test_samples_follow_softmax_alpha(tau: float) -> None:
    """Chi-square goodness of fit of 40k samples to softmax(alpha); tau must not change the distribution."""
    torch.manual_seed(1)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40_000
    _, index = gumbel_softmax_hard(logits.expand(n, -1).clone(), tau)
    observed = torch.bincount(index, minlength=5).double()
    expected = n * logits.softmax(-1).double()
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.47  # 4 degrees of freedom, p = 0.001


def test_hard_weights_are_exactly_one_hot_and_carry_the_soft_gradient() -> None:
    torch.manual_seed(2)
    alpha = torch.randn(14, 8, requires_grad=True)
    torch.manual_seed(3)
    hard, index = gumbel_softmax_hard(alpha, tau=0.7)
    assert torch.equal(hard.detach(), F.one_hot(index, 8).float())  # exact 0/1 values
    c = torch.randn(14, 8)
    (grad_hard,) = torch.autograd.grad((hard * c).sum(), alpha)
    # the same noise through the soft weights gives the same gradient (straight-through)
    torch.manual_seed(3)
    g = gumbel_like(alpha)
    soft = ((F.log_softmax(alpha, -1) + g) / 0.7).softmax(-1)
    (grad_soft,) = torch.autograd.grad((soft * c).sum(), alpha)
    assert torch.allclose(grad_hard, grad_soft, atol=1e-6)
    assert torch.count_nonzero(grad_hard) == grad_hard.numel()


def stand_in_edge(calls: list[int]) -> SimpleNamespace:
    """An edge of three plain ops, x * 2, x * 3 and x * 5, that append their index to ``calls`` when they run."""

    def op(i: int, scale: float):
        def f(x: torch.Tensor) -> torch.Tensor:
            calls.append(i)
            return x * scale
        return f

    return SimpleNamespace(ops=[op(0, 2.0), op(1, 3.0), op(2, 5.0)], kinds=["plain"] * 3, tails=[None] * 3,
                           post=lambda k, out: out)


def test_gdas_edge_forward_is_exactly_the_sampled_op_and_every_weight_gets_gradient() -> None:
    alpha = torch.zeros(1, 3, requires_grad=True)
    sample = GdasSample(alpha, tau=1.0)
    k = sample.index[0]
    calls: list[int] = []
    edge = stand_in_edge(calls)
    x = torch.randn(2, 4, 3, 3)
    y = sample.edge(0, x, edge)
    assert calls == [k]
    assert torch.equal(y, x * [2.0, 3.0, 5.0][k])
    y.sum().backward()
    assert alpha.grad is not None and torch.count_nonzero(alpha.grad) == 3


def test_gdas_sample_without_alpha_gradient_builds_no_graph() -> None:
    alpha = torch.zeros(6, 5)
    sample = GdasSample(alpha, tau=1.0)
    assert sample.hard is None and len(sample.index) == 6


def test_darts_weights_are_softmax_and_sum_to_one() -> None:
    alpha = torch.randn(14, 8)
    w = DartsWeights(alpha).weights
    assert torch.allclose(w.sum(-1), torch.ones(14))
    assert torch.allclose(w, alpha.softmax(-1))
    edge = SimpleNamespace(ops=[lambda x, s=s: x * s for s in range(8)], post=lambda k, out: out)
    x = torch.randn(2, 3)
    expected = sum(w[4, k] * x * k for k in range(8))
    assert torch.allclose(DartsWeights(alpha).edge(4, x, edge), expected)


def test_tau_schedules() -> None:
    linear = [tau_at(e, 5, 10.0, 0.1) for e in range(5)]
    assert linear[0] == 10.0 and math.isclose(linear[-1], 0.1)
    assert all(a > b for a, b in zip(linear, linear[1:]))
    assert math.isclose(linear[2], (10.0 + 0.1) / 2)
    expo = [tau_at(e, 5, 10.0, 0.1, "exponential") for e in range(5)]
    assert math.isclose(expo[0], 10.0) and math.isclose(expo[-1], 0.1)
    assert math.isclose(expo[2], 1.0)  # geometric middle of 10 and 0.1
    assert tau_at(0, 1, 10.0, 0.1) == 10.0  # a single epoch runs at tau_max


def test_mixers() -> None:
    gdas = create_mixer("gdas", tau_max=4.0, tau_min=1.0)
    assert isinstance(gdas, GDAS) and gdas.tau == 4.0
    gdas.set_epoch(3, 4)
    assert gdas.tau == 1.0
    darts = create_mixer("darts")
    assert isinstance(darts, DARTS) and darts.tau is None
    snas = create_mixer("snas", tau_max=4.0, tau_min=1.0)
    assert isinstance(snas, SNAS) and snas.tau == 4.0
    snas.set_epoch(3, 4)
    assert snas.tau == 1.0
    with pytest.raises(ValueError, match=r"mixer='gdsa' is not valid \(did you mean 'gdas'\?\); valid: gdas, darts"):
        create_mixer("gdsa")


def test_the_mixer_registry_refuses_a_second_name_and_an_option_a_mixer_does_not_take() -> None:
    with pytest.raises(ValueError, match="a mixer named 'gdas' is already registered; registered: gdas, darts"):
        mixing.register_mixer("gdas")(DARTS)
    assert isinstance(create_mixer("gdas"), GDAS)  # the first one stays
    with pytest.raises(ValueError, match="must name the options it takes"):
        mixing.register_mixer("lenient")(lambda **_: DARTS())
    assert "lenient" not in mixing.mixer_names()
    with pytest.raises(ValueError, match="mixer 'darts' takes no option 'tau_max'; its options: none"):
        create_mixer("darts", tau_max=4.0)
    with pytest.raises(ValueError, match="mixer 'snas' takes no option 'gdas_gradient'; its options: tau_max, "
                                         "tau_min, tau_schedule"):
        create_mixer("snas", gdas_gradient="all_ops")
    assert mixing.has_tau("gdas") and mixing.has_tau("snas") and not mixing.has_tau("drnas")
    # the options are the search.* keys each mixer reads, named as the config names them
    assert mixing.mixer_options("gdas") == ("tau_max", "tau_min", "tau_schedule", "gdas_gradient")
    assert mixing.mixer_options("drnas") == ("drnas_kl",)
    assert create_mixer("gdas", tau_schedule="exponential", gdas_gradient="sampled_op").gradient == "sampled_op"


def test_snas_weights_are_the_soft_sample_gdas_takes_its_argmax_of() -> None:
    alpha = torch.randn(6, 5)
    torch.manual_seed(3)
    soft = SnasWeights(alpha, tau=0.7).weights
    torch.manual_seed(3)
    hard = GdasSample(alpha, tau=0.7)
    torch.manual_seed(3)
    expected = ((F.log_softmax(alpha, -1) + gumbel_like(alpha)) / 0.7).softmax(-1)  # SNAS's relaxed sample
    assert torch.allclose(soft, expected)
    assert torch.allclose(soft.sum(-1), torch.ones(6)) and (soft > 0).all()
    assert soft.argmax(-1).tolist() == hard.index  # same noise: GDAS runs the op SNAS weighs most


def test_snas_edge_runs_every_op_weighted_and_alpha_gets_every_gradient() -> None:
    alpha = torch.zeros(1, 3, requires_grad=True)
    torch.manual_seed(0)
    sample = SnasWeights(alpha, tau=1.0)
    calls: list[int] = []
    edge = stand_in_edge(calls)
    x = torch.randn(2, 4)
    y = sample.edge(0, x, edge)
    w = sample.weights[0]
    assert sorted(calls) == [0, 1, 2]
    assert torch.allclose(y, x * (2 * w[0] + 3 * w[1] + 5 * w[2]))
    y.sum().backward()
    assert alpha.grad is not None and (alpha.grad != 0).all()


def test_snas_mask_gives_left_out_ops_zero_weight() -> None:
    mask = torch.tensor([[True, False, True], [False, True, False]])
    w = SnasWeights(torch.randn(2, 3), tau=1.0, mask=mask).weights
    assert (w[~mask] == 0).all() and torch.allclose(w.sum(-1), torch.ones(2))
    assert w[1, 1] == 1.0  # a single allowed op takes all the weight


def test_random_mixer_draws_every_op_equally_often_and_only_the_allowed_ones() -> None:
    torch.manual_seed(0)
    alpha = torch.randn(6, 5)  # alpha plays no part
    counts = torch.zeros(6, 5)
    draws = 4000
    for _ in range(draws):
        counts[torch.arange(6), torch.tensor(create_mixer("random")(alpha).index)] += 1
    expected, sd = draws / 5, math.sqrt(draws * 0.2 * 0.8)
    assert (counts - expected).abs().max() < 5 * sd
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:, 1] = mask[:, 3] = True
    picked = {k for _ in range(200) for k in create_mixer("random")(alpha, mask).index}
    assert picked == {1, 3}
