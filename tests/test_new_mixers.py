"""DrNAS's Dirichlet mixing, fair (uniform) weight steps and the NASWOT score: each method's defining property."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.searching.mixing import DirichletWeights, DrNAS, concentration, create_mixer, dirichlet_kl
from nas.searching.scores import naswot, relu_kernel
from nas.searching.supernet import build_supernet
from nas.searching.zerocost import op_prior, random_cells, score_cells
from nas.space.spaces import search_space


def test_dirichlet_weights_lie_on_the_simplex_and_follow_the_concentration() -> None:
    alpha = torch.tensor([[2.0, 0.0, -1.0, 0.5, 1.0]]).expand(20_000, -1).clone()
    w = DirichletWeights(alpha, generator=torch.Generator().manual_seed(0)).weights
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(len(w)), atol=1e-6)
    beta = concentration(alpha[0])
    assert torch.allclose(w.mean(0), beta / beta.sum(), atol=5e-3)  # E[w_k] = beta_k / sum(beta)
    assert concentration(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # alpha = 0: the uniform Dirichlet


def test_dirichlet_sample_passes_a_pathwise_gradient_to_every_concentration() -> None:
    alpha = torch.zeros(6, 5, requires_grad=True)
    w = DirichletWeights(alpha, generator=torch.Generator().manual_seed(1)).weights
    (w * torch.arange(5.0)).sum().backward()  # a loss that prefers the last ops
    assert alpha.grad is not None and (alpha.grad != 0).all()


def test_a_mask_gives_left_out_ops_weight_zero() -> None:
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, False]])
    w = DirichletWeights(torch.zeros(2, 5), mask, torch.Generator().manual_seed(2)).weights
    assert (w[~mask] == 0).all() and torch.allclose(w.sum(-1), torch.ones(2)) and w[1, 3] == 1


def test_dirichlet_kl_matches_torch_distributions_and_is_zero_at_the_prior() -> None:
    alpha = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    want = torch.distributions.kl_divergence(torch.distributions.Dirichlet(concentration(alpha)),
                                             torch.distributions.Dirichlet(torch.ones(6, 5))).sum()
    assert dirichlet_kl(alpha).item() == pytest.approx(want.item(), rel=1e-5)
    assert dirichlet_kl(torch.zeros(6, 5)).item() == pytest.approx(0.0, abs=1e-6)
    assert DrNAS(kl=0.0).regularizer(alpha) is None
    assert DrNAS(kl=0.5).regularizer(alpha).item() == pytest.approx(0.5 * want.item(), rel=1e-5)


def test_a_drnas_supernet_gives_alpha_a_gradient_in_an_alpha_step() -> None:
    torch.manual_seed(0)
    model = build_supernet("nb201", C=4, layers=1, num_classes=3, mixer=create_mixer("drnas", drnas_kl=0.1))
    model.set_step("alpha")
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0]))
    (loss + model.regularizer()).backward()
    assert model.alpha["normal"].grad is not None and (model.alpha["normal"].grad != 0).all()


def test_fair_weight_steps_sample_every_op_uniformly_while_alpha_steps_keep_the_mixer() -> None:
    torch.manual_seed(0)
    model = build_supernet("nb201", C=2, layers=1, num_classes=2, mixer=create_mixer("gdas", tau_max=1.0))
    with torch.no_grad():
        model.alpha["normal"][:, 3] = 8.0  # the GDAS sample takes op 3 almost always
    model.weight_mixer = create_mixer("random")
    model.generator = torch.Generator().manual_seed(1)
    counts = {"weights": torch.zeros(5), "alpha": torch.zeros(5)}
    for step in counts:
        model.set_step(step)
        for _ in range(2000):
            index = model.mixings()["normal"].index  # type: ignore[attr-defined]
            counts[step] += torch.bincount(torch.tensor(index), minlength=5)
    n = counts["weights"].sum()
    chi2 = ((counts["weights"] - n / 5) ** 2 / (n / 5)).sum().item()
    assert chi2 < 18.47  # uniform over the 5 ops: 4 degrees of freedom, p = 0.001
    assert counts["alpha"][3] / counts["alpha"].sum() > 0.99


def test_relu_kernel_and_naswot_equal_the_formula_on_a_hand_built_network() -> None:
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(3, 4), nn.Linear(4, 5)
    net = nn.Sequential(lin1, nn.ReLU(), lin2, nn.ReLU())
    x = torch.randn(6, 3)
    c1 = (lin1(x) > 0).double()  # the codes of each ReLU, computed here from the formula
    c2 = (lin2(torch.relu(lin1(x))) > 0).double()
    want = sum(c @ c.T + (1 - c) @ (1 - c).T for c in (c1, c2))  # agreements: both active or both inactive
    K = relu_kernel(net, x)
    assert torch.equal(K, want)
    assert K.diagonal().tolist() == [9.0] * 6  # an image agrees with itself on all 4 + 5 units
    assert naswot(net, (x, None)) == pytest.approx(math.log(abs(torch.linalg.det(want).item())))


def test_naswot_ranks_a_cell_of_convolutions_above_a_cell_of_none() -> None:
    from nas.space.nb201 import from_nb201_string

    cells = [from_nb201_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
             from_nb201_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                               "nor_conv_3x3~2|")]
    x = torch.randn(16, 3, 8, 8)
    empty, convs = score_cells(cells, ["naswot"], (x, torch.zeros(16, dtype=torch.long)), C=4, layers=1,
                               num_classes=3)["naswot"]
    assert convs > empty


def test_beta_decay_is_the_mean_logsumexp_and_pulls_the_largest_logits_down_most() -> None:
    from nas.searching.mixing import beta_decay

    alpha = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], requires_grad=True)
    value = beta_decay(alpha)
    assert value.item() == pytest.approx(torch.logsumexp(alpha, -1).mean().item())
    value.backward()
    assert torch.allclose(alpha.grad, alpha.detach().softmax(-1) / 2)  # d/d alpha: softmax over the 2 edges
    model = build_supernet("nb201", C=2, layers=1, num_classes=2, mixer=create_mixer("gdas"))
    assert model.regularizer() is None
    model.beta_decay = 0.5
    assert model.regularizer().item() == pytest.approx(0.5 * beta_decay(model.alpha["normal"]).item())


def test_the_prior_is_each_ops_mean_standardised_score() -> None:
    space = search_space("nb201")
    cells = random_cells(space, seed=5, samples=30)
    values = [float(i % 7) - 3.0 for i in range(29)] + [-math.inf]  # a cell that passes nothing on: the lowest
    prior = op_prior(space, cells, values)["normal"]
    v = torch.tensor(values, dtype=torch.float64)
    v[-1] = v[:-1].min()
    z = (v - v.mean()) / v.std()
    for e in range(6):
        for k, op in enumerate(space.ops):
            held = [zi for g, zi in zip(cells, z, strict=True) if [o for node in g.normal for o, _ in node][e] == op]
            want = float(sum(held) / len(held)) if held else 0.0
            assert prior[e, k].item() == pytest.approx(want, abs=1e-5)
    with pytest.raises(UserError, match="every cell scored -inf"):
        op_prior(space, cells, [-math.inf] * 30)
