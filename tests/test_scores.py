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
from nas.space.derivation import random_genotype
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
    # a score is pure: not even BatchNorm's running statistics move, and the network stays in training mode
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items())
    assert all(m.training for m in net.modules())


def test_a_cell_that_passes_nothing_on_scores_lowest() -> None:
    from nas.space.nb201 import from_nb201_string

    g = from_nb201_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    net = scoring_network(g, C=4, layers=1, num_classes=5)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    assert get_score("jacob_cov")(net, (x, y)) == -math.inf
    resnet = scoring_network(from_nb201_string("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|"
                                               "skip_connect~2|"), C=4, layers=1, num_classes=5)
    assert get_score("meco")(net, (x, y)) < get_score("meco")(resnet, (x, y))  # its constant maps add nothing
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


def test_a_cells_scores_do_not_depend_on_their_order_or_on_earlier_calls() -> None:
    # NASWOT's forward pass in training mode moves BatchNorm's running statistics, which synflow read in eval mode:
    # each score must see the network its definition assumes, whatever ran before
    rng = random.Random(0)
    space = get_space("nb201")
    cells = [random_genotype(space, rng) for _ in range(6)]
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))
    names = ["naswot", "synflow", "zico", "swap", "meco"]
    first = score_cells(cells, names, (x, y), C=4, layers=1, num_classes=5, seed=0)
    again = score_cells(cells, names[::-1], (x, y), C=4, layers=1, num_classes=5, seed=0)
    alone = {n: score_cells(cells, [n], (x, y), C=4, layers=1, num_classes=5, seed=0)[n] for n in names}
    for n in names:
        assert first[n] == again[n] == alone[n], n
    net = scoring_network(cells[0], C=4, layers=1, num_classes=5, seed=0)
    values = []
    for _ in range(3):
        get_score("naswot")(net, (x, y))
        values.append(get_score("synflow")(net, (x, y)))
    assert values[0] == values[1] == values[2]


def test_synflow_sees_a_supernets_alpha_with_its_sign() -> None:
    from nas.searching.mixing import create_mixer
    from nas.searching.supernet import build_supernet

    torch.manual_seed(0)
    model = build_supernet("nb201", C=4, layers=1, num_classes=3, mixer=create_mixer("darts"))
    with torch.no_grad():
        model.alpha["normal"].copy_(torch.linspace(-2, 2, model.alpha["normal"].numel()).view_as(
            model.alpha["normal"]))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    model.set_step("weights")
    plus = get_score("synflow")(model, (x, y))
    with torch.no_grad():
        model.alpha["normal"].neg_()
    minus = get_score("synflow")(model, (x, y))
    assert math.isfinite(plus) and math.isfinite(minus)
    assert abs(plus - minus) > 1e-3
    assert float(model.alpha["normal"].min()) == pytest.approx(-2.0)  # the supernet's own alpha is untouched


def test_synflow_reads_batchnorm_at_fresh_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(2))
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    net(x)
    fresh = get_score("synflow")(net, (x, y))
    with torch.no_grad():
        net[1].running_var.fill_(100.0)  # statistics a trained network, or an earlier forward pass, left behind
        net[1].running_mean.fill_(3.0)
    assert get_score("synflow")(net, (x, y)) == fresh


def test_swap_counts_the_distinct_activation_patterns_of_the_units() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 2))
    x, y = torch.randn(5, 2, 2, 2), torch.randint(0, 2, (5,))
    # the score redraws the weights from N(0, 1) with generator seed 0, in module order: the conv's come first
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 1, 1, generator=g)
    codes = (nn.functional.conv2d(x, W) > 0).flatten(1).T  # (units, images)
    expected = len({tuple(row.tolist()) for row in codes})
    assert get_score("swap")(net, (x, y)) == expected
    assert float(net[0].weight.detach().abs().max()) < 1.0  # the network's own weights are untouched (small init)
    from nas.searching.scores import pattern_count

    many = torch.rand(40, 130) > 0.5  # more images than one packed word holds
    many[7] = many[3]
    assert pattern_count(many) == len({tuple(r.tolist()) for r in many}) == 39


def test_meco_sums_the_smallest_eigenvalue_of_each_convolutions_channel_correlation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 3, bias=False),
                        nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(6, 3, 7, 7), torch.randint(0, 2, (6,))
    net(x)
    with torch.no_grad():
        f1 = net[0](x[:1])
        f2 = net[2](net[1](f1))
    expected = sum(float(torch.linalg.eigvalsh(torch.corrcoef(f[0].flatten(1).double()))[0]) for f in (f1, f2))
    assert get_score("meco")(net, (x, y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_a_pool_of_random_cells_holds_no_cell_twice(space: str) -> None:
    from nas.searching.zerocost import random_cells

    sp = get_space(space)
    cells = random_cells(sp, seed=0, samples=300)
    assert len(cells) == 300 and len({str(g) for g in cells}) == 300
    rng = random.Random(0)  # the same stream: the pool is the seeded draws with the repeats skipped
    draws = [random_genotype(sp, rng) for _ in range(300)]
    assert cells[:10] == draws[:10]
    few = random_cells(sp, seed=0, samples=50, keep=lambda g: str(g).count("none") == 0)
    assert len({str(g) for g in few}) == len(few) == 50 and all("none" not in str(g) for g in few)
