"""K NAS-Bench-201 networks as one module (nas/space/stacked.py) and the final stage that trains its finalists
together: the same logits, gradients, clipping and SGD steps as the networks alone, and the same records."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nas.data.datasets import make_synthetic
from nas.data.pipeline import Batches
from nas.searching.finalists import successive_halving
from nas.searching.zerocost import scoring_network
from nas.space.derivation import random_genotype
from nas.space.nb201 import from_nb201_string
from nas.space.spaces import get_space
from nas.space.stacked import StackedNB201, clip_grad_norms

ODD = ["|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|",  # no op with a weight
       "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # passes nothing on
       "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"]


def networks(n: int = 6, seed: int = 1, C: int = 4, layers: int = 1) -> list[nn.Module]:
    rng = random.Random(seed)
    cells = [random_genotype(get_space("nb201"), rng) for _ in range(n - len(ODD))] + [from_nb201_string(s)
                                                                                       for s in ODD]
    return [scoring_network(g, C=C, layers=layers, num_classes=3, seed=k) for k, g in enumerate(cells)]


@pytest.mark.parametrize("layers", [1, 2])
def test_the_stack_computes_each_networks_logits_and_gradients(layers: int) -> None:
    nets = networks(layers=layers)
    stack = StackedNB201(nets)  # type: ignore[arg-type]
    assert sum(p.numel() for p in stack.parameters()) == sum(p.numel() for n in nets for p in n.parameters())
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    out = stack(x)
    assert out.shape == (8, len(nets), 3)
    nn.functional.cross_entropy(out.transpose(1, 2), y[:, None].expand(-1, len(nets))).mul(len(nets)).backward()
    for k, net in enumerate(nets):
        logits = net(x)[0]
        torch.testing.assert_close(out[:, k], logits, rtol=1e-5, atol=1e-6)
        nn.functional.cross_entropy(logits, y).backward()
    grads = stack.split({n: p.grad for n, p in stack.named_parameters() if p.grad is not None})
    for k, net in enumerate(nets):
        for name, p in net.named_parameters():
            if p.grad is None:  # a parameter no forward pass reached has none in the stack either
                assert name not in grads[k] or float(grads[k][name].abs().sum()) == 0
                continue
            torch.testing.assert_close(grads[k][name], p.grad, rtol=1e-4, atol=1e-6)


def test_split_join_and_write_back_round_trip() -> None:
    nets = networks()
    stack = StackedNB201(nets)  # type: ignore[arg-type]
    state = stack.state_dict()
    per_net = stack.split(state)
    for k, net in enumerate(nets):
        assert per_net[k].keys() == net.state_dict().keys()
        assert all(torch.equal(v, net.state_dict()[n]) for n, v in per_net[k].items())
    joined = stack.join(per_net)
    assert joined.keys() == state.keys() and all(torch.equal(joined[n], state[n]) for n in state)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(1.0)
    stack.write_back(nets)  # type: ignore[arg-type]
    again = StackedNB201(nets)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), stack.state_dict().values(),
                                                  strict=True))


def test_each_network_is_clipped_as_it_would_be_alone() -> None:
    nets = networks()
    stack = StackedNB201(nets)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    for p in stack.parameters():
        p.grad = torch.randn(p.shape, generator=g) * (0.01 if p.shape[0] % 2 else 1.0)
    alone = stack.split({n: p.grad.clone() for n, p in stack.named_parameters()})
    norms = clip_grad_norms(stack, 5.0)
    clipped = stack.split({n: p.grad for n, p in stack.named_parameters()})
    for k, net in enumerate(nets):
        params = dict(net.named_parameters())
        for name, grad in alone[k].items():
            params[name].grad = grad
        before = float(torch.nn.utils.clip_grad_norm_(list(params.values()), 5.0))
        assert float(norms[k]) == pytest.approx(before, rel=1e-5)
        for name, p in params.items():
            torch.testing.assert_close(clipped[k][name], p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rank,eta", [("accuracy", 2), ("tse", 8)])
def test_finalists_trained_together_match_finalists_trained_alone(rank: str, eta: int) -> None:
    data = make_synthetic(96, 3, 12, seed=0)
    train = Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True)
    valid = Batches(make_synthetic(64, 3, 12, seed=1), batch_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                    shuffle=False, drop_last=False)
    rng = random.Random(2)
    cells = [random_genotype(get_space("nb201"), rng) for _ in range(3)] + [from_nb201_string(ODD[2])]
    runs = {}
    for together in (False, True):
        lines: list[str] = []
        runs[together] = successive_halving(cells, train, valid, C=4, layers=1, num_classes=3, epochs=4, eta=eta,
                                            rank=rank, average=2, lr=0.1, seed=0, together=together,
                                            say=lines.append)
        assert ("together as one module" in lines[0]) == together
    (alone_winner, alone), (together_winner, both) = runs[False], runs[True]
    assert together_winner == alone_winner
    for a, b in zip(alone, both, strict=True):
        assert a["genotype"] == b["genotype"] and a["epochs"] == b["epochs"] and a["out_after_rung"] == b[
            "out_after_rung"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        for key in ("valid_acc", "valid_loss"):
            assert [v is None for v in a[key]] == [v is None for v in b[key]]
            assert [v for v in b[key] if v is not None] == pytest.approx([v for v in a[key] if v is not None],
                                                                       rel=1e-3, abs=1e-3)


def test_only_nb201_cells_train_together() -> None:
    data = make_synthetic(64, 3, 12, seed=0)
    train = Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0)
    rng = random.Random(0)
    cells = [random_genotype(get_space("darts"), rng) for _ in range(2)]
    with pytest.raises(ValueError, match="only NAS-Bench-201 cells train together"):
        successive_halving(cells, train, None, C=4, layers=3, num_classes=3, epochs=1, together=True)
    lines: list[str] = []
    winner, _ = successive_halving(cells, train, None, C=4, layers=3, num_classes=3, epochs=1, say=lines.append)
    assert winner in cells and "trained alone" in lines[0]


def test_a_finalist_from_several_initialisations_has_their_mean_figures() -> None:
    data = make_synthetic(96, 3, 12, seed=0)
    train = Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True)
    valid = Batches(make_synthetic(64, 3, 12, seed=1), batch_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                    shuffle=False, drop_last=False)
    rng = random.Random(2)
    cells = [random_genotype(get_space("nb201"), rng) for _ in range(3)]
    common = dict(C=4, layers=1, num_classes=3, epochs=3, eta=8, rank="accuracy", average=2, say=lambda _: None)
    _, both = successive_halving(cells, train, valid, inits=2, seed=5, **common)  # type: ignore[arg-type]
    _, first = successive_halving(cells, train, valid, seed=5, **common)  # type: ignore[arg-type]
    _, second = successive_halving(cells, train, valid, seed=1005, **common)  # type: ignore[arg-type]
    for b, x, y in zip(both, first, second, strict=True):
        assert b["train_loss"] == pytest.approx([(u + v) / 2 for u, v in zip(x["train_loss"], y["train_loss"],
                                                                           strict=True)])
        assert b["valid_acc"][-1] == pytest.approx((x["valid_acc"][-1] + y["valid_acc"][-1]) / 2)


def test_neighbours_differ_from_the_cell_by_one_op() -> None:
    from nas.space.derivation import neighbours

    for space, n in (("nb201", 24), ("darts", 96)):
        sp = get_space(space)
        g = random_genotype(sp, random.Random(3))
        near = neighbours(sp, g)
        assert len(near) == len({str(h) for h in near}) == n and str(g) not in {str(h) for h in near}
        for h in near:
            before = [e for nodes, _ in g.cells().values() for node in nodes for e in node]
            after = [e for nodes, _ in h.cells().values() for node in nodes for e in node]
            assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
            assert all(a[1] == b[1] for a, b in zip(before, after, strict=True))  # the inputs stay


def test_local_search_climbs_while_a_neighbour_wins_and_stops_where_none_does() -> None:
    from nas.searching.finalists import halving, local_search

    data = make_synthetic(96, 3, 12, seed=0)
    train = Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True)
    empty = from_nb201_string(ODD[1])  # passes nothing on: at chance
    alike = dict(C=4, layers=1, num_classes=3, epochs=2, seed=0)
    best, finalists = halving([empty], train, None, eta=2, rank="tse", say=lambda _: None, **alike)
    lines: list[str] = []

    def output_edge_first(cells: list) -> list:  # the neighbours that connect the input to the output first
        return sorted(cells, key=lambda g: g.normal[2][0][0] == "none")

    won, trained = local_search(best, finalists, get_space("nb201"), train, None, rounds=3, size=2, rank="tse",
                                average=1, order=output_edge_first, say=lines.append, **alike)
    assert won.genotype.normal[2][0][0] != "none" and won.key("tse") < best.key("tse")
    assert {f.round for f in trained} >= {1} and all(len(f.train_loss) == 2 for f in trained)
    assert len({str(f.genotype) for f in trained}) == len(trained)  # no cell trained twice
    assert "it is the new best" in lines[1]
    rounds = max(f.round for f in trained)
    assert rounds == 3 or "the best stays" in lines[-1] or "every neighbour" in lines[-1]


def test_gdas_over_a_short_list_learns_to_draw_the_cell_that_learns() -> None:
    from nas.searching.shortlist import gdas_over_list

    data = make_synthetic(128, 3, 12, seed=0)
    train = Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True)
    valid = Batches(make_synthetic(128, 3, 12, seed=1), batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=1)
    plain = Batches(make_synthetic(128, 3, 12, seed=1), batch_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                    shuffle=False, drop_last=False)
    empty, conv = from_nb201_string(ODD[1]), from_nb201_string(ODD[2])
    lines: list[str] = []
    winner, records = gdas_over_list([empty, conv], train, valid, plain, space=get_space("nb201"), C=4, layers=1,
                                     num_classes=3, epochs=6, beta_lr=0.05, seed=0, say=lines.append)
    assert winner == conv and records[1]["beta"] > records[0]["beta"]
    assert sum(r["drawn"] for r in records) == 6 * 4  # one finalist per weight step
    assert records[0]["shared_acc"] < records[1]["shared_acc"]  # the cell that passes nothing on is at chance
    assert [r["place"] for r in records] == [2, 1] and "sharing one supernet's weights" in lines[0]
    again, by_acc = gdas_over_list([empty, conv], train, valid, plain, space=get_space("nb201"), C=4, layers=1,
                                   num_classes=3, epochs=6, beta_lr=0.05, seed=0, rank="accuracy", say=lambda _: None)
    assert again == conv and [r["beta"] for r in by_acc] == [r["beta"] for r in records]  # seeded: the same run
