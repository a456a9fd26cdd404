"""Search under a budget: the cost model is exact for parameters and FLOPs (against whole-network counts and the
NAS-Bench-201 table's sizes), the expected cost is differentiable and follows GDAS's sample, the band and log rules
push the right way, repair brings a cell under the target, and a budgeted search ends within it and says so."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nas.cli import latency_main, search_main
from nas.errors import UserError
from nas.searching.budget import Budget
from nas.searching.costs import CostModel, count_costs, latency_table, load_costs, save_costs
from nas.searching.mixing import create_mixer
from nas.searching.supernet import build_supernet
from nas.space.derivation import random_genotype
from nas.space.nb201 import from_nb201_string
from nas.space.network import build_network, count_flops, count_parameters
from nas.space.spaces import get_space

NB201 = get_space("nb201")
DARTS = get_space("darts")


@pytest.fixture(scope="module")
def nb201_params() -> CostModel:
    return count_costs("params", NB201, C=16, layers=5, classes=10, channels=3, size=32)


@pytest.mark.parametrize("space,metric", [("nb201", "params"), ("nb201", "flops"), ("darts", "params"),
                                          ("darts", "flops")])
def test_the_cost_model_is_exact(space: str, metric: str) -> None:
    sp = get_space(space)
    C, layers, size = (8, 2, 16) if space == "nb201" else (6, 5, 16)
    cost = count_costs(metric, sp, C=C, layers=layers, classes=10, channels=3, size=size)
    rng = random.Random(0)
    for _ in range(6):
        g = random_genotype(sp, rng)
        net = build_network(g, C=C, layers=layers, num_classes=10)
        true = count_parameters(net) if metric == "params" else count_flops(net, 3, size)
        assert cost.of(g) == pytest.approx(true / 1e6, rel=1e-9, abs=1e-12)
    assert cost.extreme(min) <= cost.of(g) <= cost.extreme(max)


def test_sizes_match_the_benchmark_table(nb201_params: CostModel) -> None:
    """NAS-Bench-201's network (C=16, N=5, CIFAR-10): the table's size of a cell equals the cost model's."""
    from nas.bench201 import arch_of_key, load_benchmark

    table = load_benchmark("table")
    for key in random.Random(1).sample(table.keys, 20):
        g = from_nb201_string(arch_of_key(key))
        assert nb201_params.of(g) == pytest.approx(table.rows["cifar10"][key]["model_size"][0], abs=1e-9)
    assert nb201_params.extreme(min) == pytest.approx(nb201_params.base)  # the all-`none` cell


def test_cover_genotypes_hold_the_op_on_every_edge() -> None:
    for space in (NB201, DARTS):
        seen = set()
        for g in space.cover_genotypes("skip_connect"):
            for node_id, node in zip(space.nodes, g.normal, strict=True):
                assert len({src for _, src in node}) == len(node)  # distinct inputs
                seen |= {space.edges.index((src, node_id)) for _, src in node}
        assert seen == set(range(space.num_edges))


def test_expected_cost_follows_the_gdas_sample_and_reaches_alpha(nb201_params: CostModel) -> None:
    model = build_supernet("nb201", C=4, layers=1, num_classes=10, mixer=create_mixer("gdas"))
    model.set_step("alpha")
    model(torch.randn(2, 3, 8, 8))
    w = model.cost_weights()["normal"]
    sample = model._mixings["normal"]
    assert torch.equal(w.detach(), torch.nn.functional.one_hot(torch.tensor(sample.index), 5).float())
    cell = from_nb201_string("|" + "|+|".join("|".join(f"{NB201.ops[sample.index[e]]}~{src}"
                                                        for e, (src, dst) in enumerate(NB201.edges) if dst == d)
                                              for d in NB201.nodes) + "|")
    expected = nb201_params.expected({"normal": w})
    assert float(expected.detach()) == pytest.approx(nb201_params.of(cell))  # the sampled cell's exact cost
    expected.backward()
    assert model.alpha["normal"].grad is not None and model.alpha["normal"].grad.abs().sum() > 0
    soft = nb201_params.expected(model.cost_weights(sampled=False))  # softmax: between the extremes
    assert nb201_params.extreme(min) < float(soft) < nb201_params.extreme(max)


def test_band_and_log_rules(nb201_params: CostModel) -> None:
    band = Budget(nb201_params, target=0.6, tolerance=0.2)
    x = torch.tensor(0.9, requires_grad=True)
    band.loss(x).backward()
    assert x.grad is not None and x.grad > 0  # above the target: pushed down
    for value, sign in ((0.3, -1), (0.55, 0)):  # below the band: pushed up; inside it: left alone
        y = torch.tensor(value, requires_grad=True)
        band.loss(y).backward()
        assert y.grad is not None and torch.sign(y.grad) == sign
    log = Budget(nb201_params, target=0.6, rule="log", weight=0.5)
    z = torch.tensor(0.3, requires_grad=True)
    log.loss(z).backward()
    assert z.grad == pytest.approx(0.5 / 0.3)  # always pushed down, in proportion to the relative cost


def test_repair_brings_a_cell_under_the_target_and_says_how(nb201_params: CostModel) -> None:
    budget = Budget(nb201_params, target=0.5)
    dear = from_nb201_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                             "nor_conv_3x3~2|")
    alpha = torch.zeros(6, 5)
    alpha[:, 3] = 2.0
    alpha[0, 2] = 1.5  # edge 0->1 prefers nor_conv_1x1 next: the repair gives that up first
    fixed, changes = budget.repair(dear, {"normal": alpha})
    assert budget.fits(fixed) and not budget.fits(dear) and changes
    assert "edge 0->1: nor_conv_3x3 -> nor_conv_1x1" in changes[0]
    assert budget.repair(fixed, {"normal": alpha}) == (fixed, [])  # a cell that fits is kept as it is
    with pytest.raises(UserError, match=r"search.budget.target=0.01 is below the cheapest cell"):
        Budget(nb201_params, target=0.01).check()


def test_latency_table_is_timed_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    net = {"C": 4, "layers": 1, "classes": 10, "channels": 3, "size": 8}
    said: list[str] = []
    first = latency_table(NB201, net, torch.device("cpu"), 1, None, said.append)
    assert any("timing every op" in s for s in said) and first.table["normal"].shape == (6, 5)
    assert (first.table["normal"][:, 3] > 0).all() and first.base >= 0  # every 3x3 conv took time
    said.clear()
    again = latency_table(NB201, net, torch.device("cpu"), 1, None, said.append)
    assert said[0].startswith("latency table: ") and torch.equal(again.table["normal"], first.table["normal"])
    save_costs(first, tmp_path / "t.json")
    assert load_costs(tmp_path / "t.json", NB201).base == first.base
    with pytest.raises(UserError, match="of another space"):
        load_costs(tmp_path / "t.json", DARTS)


SEARCH = ["--config", "configs/search/gdas-nb201-cifar10.yaml", "data.name=synthetic", "data.root=x",
          "data.synthetic.train=128", "data.batch_size=32", "model.C=4", "model.layers=1", "search.epochs=2",
          "run.tensorboard=false", "search.budget.metric=params", "search.arch_lr=0.01"]


def test_a_budgeted_search_ends_within_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert search_main([*SEARCH, "search.budget.target=0.3", f"run.dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "budget: 0.300M params (band rule" in out and "cost: expected" in out and "within the budget" in out
    record = json.loads((run / "budget.json").read_text())
    assert record["within"] and record["cost"] <= 0.3 and record["network"]["C"] == 16
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("expected_cost" in m and "derived_cost" in m for m in metrics)
    from nas.space.genotype import read_genotype

    cost = count_costs("params", NB201, C=16, layers=5, classes=10, channels=3, size=32)
    assert cost.of(read_genotype(run / "genotype.json")) == pytest.approx(record["cost"])


def test_an_impossible_budget_is_refused_and_leaves_nothing(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert search_main([*SEARCH, "search.budget.target=0.01", f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "search.budget.target=0.01 is below the cheapest cell, 0.073M params" in err and "valid: 0.07" in err
    assert not run.exists()
    assert search_main([*SEARCH, "search.budget.target=50", f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "search.budget.target=50 is above the dearest cell" in err and "every cell fits" in err
    assert "valid: 0.07" in err and not run.exists()


def test_the_latency_tool_writes_a_table_searches_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "lat.json"
    small = ["data.synthetic.train=64", "data.image_size=8", "model.space=nb201", "model.C=4", "model.layers=1",
             "search.budget.metric=latency", "search.budget.target=100", "search.budget.C=4", "search.budget.layers=1"]
    assert latency_main([*small, "--out", str(table), "run.device=cpu"]) == 0
    assert "latency table written" in capsys.readouterr().out
    run = tmp_path / "run"
    cost = load_costs(table, NB201)
    middle = (cost.extreme(min) + cost.extreme(max)) / 2  # a target this machine's timings make meaningful
    assert search_main([*small, "search.epochs=1", "data.batch_size=16", f"search.budget.latency_table={table}",
                        f"search.budget.target={middle}", "run.tensorboard=false", f"run.dir={run}"]) == 0
    assert json.loads((run / "budget.json").read_text())["metric"] == "latency"
    assert search_main([*small, "search.budget.latency_table=nope.json", f"run.dir={tmp_path / 'r2'}"]) == 2
    assert "search.budget.latency_table='nope.json' is not a file" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
