"""Zero-cost scores against their formulas computed by hand on tiny networks, the registry, rank aggregation and
rank correlation."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.searching.scores import get_score, register_score, score_names
from nas.searching.zerocost import aggregate, kendall_tau, ranks, score_cells, scoring_network, spearman
from nas.space.genotype import random_genotype
from nas.space.spaces import get_space


def linear(D: int = 6, K: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, K, bias=False)


def batch(N: int = 8, D: int = 6, K: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)


def ce_grad(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d mean CE(W x, y) / dW, by hand: (softmax(W x) - onehot(y))^T x / N."""
    p = (x @ W.T).softmax(1)
    p[torch.arange(len(y)), y] -= 1
    return p.T @ x / len(y)


def test_snip_and_grad_norm_of_a_linear_map() -> None:
    net, (x, y) = linear(), batch()
    G = ce_grad(net.weight.detach(), x, y)
    assert get_score("snip")(net, (x, y)) == pytest.approx(float((net.weight.detach() * G).abs().sum()), rel=1e-5)
    assert get_score("grad_norm")(net, (x, y)) == pytest.approx(float(G.norm()), rel=1e-5)


def test_synflow_of_a_positive_two_layer_net_is_twice_its_output() -> None:
    # R = 1^T |W2| |W1| 1 is homogeneous of degree 1 in each layer's weights: sum theta dR/dtheta = 2 R
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    W1, W2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    R = float((W2 @ W1 @ torch.ones(5, dtype=torch.float64)).sum())
    before = [p.detach().clone() for p in net.parameters()]
    assert get_score("synflow")(net, batch(D=5)) == pytest.approx(math.log(2 * R), rel=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # signs kept: a copy


def test_naswot_is_the_log_determinant_of_the_code_agreement() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False))
    x, y = batch()
    c = (x @ net[0].weight.detach().T > 0).double()  # (N, units) which units each image activates
    K = c @ c.T + (1 - c) @ (1 - c).T
    assert get_score("naswot")(net, (x, y)) == pytest.approx(float(torch.linalg.slogdet(K)[1]), rel=1e-9)


def test_jacob_cov_of_a_relu_net() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False))
    x, y = batch()
    W1, W2 = net[0].weight.detach(), net[2].weight.detach()
    active = (x @ W1.T > 0).double()  # (N, 10)
    J = (active * W2.double().sum(0)) @ W1.double()  # d sum(logits_i) / d x_i, one row per image
    v = torch.linalg.eigvalsh(torch.corrcoef(J))
    expected = -float((torch.log(v + 1e-5) + 1 / (v + 1e-5)).sum())
    assert get_score("jacob_cov")(net, (x, y)) == pytest.approx(expected, rel=1e-6)


def test_zico_of_a_linear_map() -> None:
    net, (x, y) = linear(), batch()
    G = torch.stack([ce_grad(net.weight.detach(), xs, ys) for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True)])
    G = G.double()
    expected = math.log(float((G.abs().mean(0) / G.std(0, unbiased=False)).sum()))
    assert get_score("zico")(net, (x, y)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match="zico needs at least 4 images"):
        get_score("zico")(net, (x[:3], y[:3]))


def test_ntk_of_a_linear_map_is_the_condition_of_the_gram_matrix() -> None:
    # d sum(W x_i) / dW = 1 x_i^T, so the kernel is K * X X^T: its condition number is X X^T's
    net, (x, y) = linear(D=10), batch(N=5, D=10)
    eig = torch.linalg.eigvalsh((x @ x.T).double())
    assert get_score("ntk")(net, (x, y)) == pytest.approx(-math.log(float(eig[-1] / eig[0])), rel=1e-5)


def test_params_and_flops() -> None:
    net, b = linear(6, 3), batch()
    assert get_score("params")(net, b) == 18
    assert get_score("flops")(net, b) == 18  # one multiply-add per weight for one image


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_every_score_runs_on_a_cell_network_and_leaves_it_as_it_was(space: str) -> None:
    g = random_genotype(get_space(space), random.Random(3))
    layers = 1 if space == "nb201" else 3
    net = scoring_network(g, C=4, layers=layers, num_classes=5, seed=0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    scores = score_cells([g], score_names(), (x, y), C=4, layers=layers, num_classes=5, seed=0)
    assert set(scores) == set(score_names())
    for name in score_names():
        value = get_score(name)(net, (x, y))
        assert isinstance(value, float) and not math.isnan(value), name
        assert value == pytest.approx(scores[name][0], rel=1e-4, abs=1e-6), name  # the same seed, the same network
    assert all(p.grad is None for p in net.parameters())
    # synflow and flops change nothing; the others run in training mode, which moves only BatchNorm's statistics
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items() if "running" not in k and "batches" not in k)


def test_a_cell_that_passes_nothing_on_scores_lowest() -> None:
    from nas.space.genotype import from_nb201_string

    g = from_nb201_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    net = scoring_network(g, C=4, layers=1, num_classes=5)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    assert get_score("jacob_cov")(net, (x, y)) == -math.inf
    assert get_score("naswot")(net, (x, y)) < get_score("naswot")(
        scoring_network(from_nb201_string("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|"
                                          "skip_connect~2|"), C=4, layers=1, num_classes=5), (x, y))


def test_registry() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_score("snip", "again")(lambda net, b: 0.0)
    with pytest.raises(UserError, match=r"search.score='zicoo' is not a score \(did you mean 'zico'\?\); valid: "):
        get_score("zicoo")
    with pytest.raises(UserError, match="is not a score"):
        score_cells([], ["nope"], batch(), C=4, layers=1, num_classes=3)


def test_ranks_and_aggregation() -> None:
    assert ranks([3.0, 1.0, 2.0, 2.0, -math.inf]) == [5.0, 2.0, 3.5, 3.5, 1.0]
    a, b = [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 1.0, 2.0]
    n = 4
    expected = [math.log(ra / n) + math.log(rb / n) for ra, rb in zip(ranks(a), ranks(b), strict=True)]
    assert aggregate({"a": a, "b": b}, "logrank") == pytest.approx(expected)
    # vote: cell i beats j when a majority of the scores rank it higher
    c = [2.0, 1.0, 4.0, 3.0]
    votes = aggregate({"a": a, "b": b, "c": c}, "vote")
    cols = [a, b, c]
    for i in range(4):
        beats = sum(sum(col[i] > col[j] for col in cols) >= 2 for j in range(4) if j != i)
        assert votes[i] == beats
    with pytest.raises(ValueError, match="valid: logrank, vote"):
        aggregate({"a": a}, "mean")


def test_rank_correlations_against_their_definitions() -> None:
    rng = random.Random(0)
    a = [rng.choice([1.0, 2.0, 3.0, 4.0, 5.0]) for _ in range(30)]  # with ties
    b = [v + rng.gauss(0, 2) for v in a]
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s = (a[i] - a[j]) * (b[i] - b[j])
        conc, disc = conc + (s > 0), disc + (s < 0)
        tx, ty = tx + (a[i] == a[j] and b[i] != b[j]), ty + (b[i] == b[j] and a[i] != a[j])
    expected = (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))
    assert kendall_tau(a, b) == pytest.approx(expected)
    ra, rb = torch.tensor(ranks(a)), torch.tensor(ranks(b))
    assert spearman(a, b) == pytest.approx(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]))
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert spearman(a, [-v for v in a]) == pytest.approx(-1.0)
