"""Collapse into parameter-free cells and its remedies: the per-epoch measures (recorded, shown, kept over resume),
the warning, the warm-up, the skip cap, dropout on parameter-free ops, selection by perturbation, and random search
with weight sharing's selection by sampling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nas.cli import search_main
from nas.config import ConfigError, SearchConfig, load_config
from nas.searching import perturb
from nas.searching.collapse import dominance_warning, edge_stats
from nas.searching.mixing import DARTS, GDAS
from nas.searching.supernet import build_supernet
from nas.space.derivation import derive, random_genotype
from nas.space.genotype import PUBLISHED, published_genotype, read_genotype
from nas.space.nb201 import from_nb201_string
from nas.space.spaces import get_space

TINY = ["model.space=nb201", "model.C=4", "model.layers=1", "data.synthetic.train=256", "data.image_size=8",
        "data.batch_size=32", "run.tensorboard=false"]  # 4 steps per epoch


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_the_warning_fires_on_parameter_free_cells_and_not_on_convolutional_ones() -> None:
    for name in PUBLISHED:  # every published DARTS-space cell retrains well: none may set it off
        assert dominance_warning(published_genotype(name)) is None, name
    conv = from_nb201_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|")
    assert dominance_warning(conv) is None  # 3 of 6: not more than 65%
    collapsed = from_nb201_string("|avg_pool_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|")
    text = dominance_warning(collapsed)
    assert text is not None and "5 of its 6 edges are none, skip_connect or pooling, so only 1 learn" in text
    assert text.endswith("the search may have collapsed (remedies: docs/collapse.md)") and "\n" not in text
    assert len(text) <= 200 and (Path(__file__).parents[1] / "docs" / "collapse.md").is_file()
    # a budget's repair that turned a convolutional cell into this one: the budget is named, not a collapse
    note = dominance_warning(collapsed, derived=conv, repaired=2)
    assert note is not None and note.startswith("note: the budget's repair left the normal cell mostly "
                                                "parameter-free (2 ops replaced") and "collapsed" not in note
    assert dominance_warning(collapsed, derived=collapsed, repaired=1) == text  # it had collapsed before the repair


@pytest.mark.parametrize("ops,fires", [("[skip_connect,avg_pool_3x3,none]", True),
                                       ("[nor_conv_3x3,nor_conv_1x1]", False)])
def test_a_search_ends_with_the_warning_only_when_its_cell_is_parameter_free(tmp_path: Path, ops: str,
                                                                              fires: bool) -> None:
    run_dir = tmp_path / "run"
    assert search_main([*TINY, "search.epochs=1", f"model.ops={ops}", f"run.dir={run_dir}", "--quiet"]) == 0
    assert ("warning: the normal cell is dominated by parameter-free edges" in (run_dir / "log.txt").read_text()) \
        == fires


def test_every_epoch_records_and_shows_parameter_free_edges_and_alpha_mass(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert search_main([*TINY, "search.epochs=2", "model.space=darts", "model.layers=3", f"run.dir={run_dir}",
                        "--quiet"]) == 0
    space = get_space("darts")
    for m, g, a in zip(records(run_dir), records(run_dir, "genotypes.jsonl"), records(run_dir, "alpha.jsonl"),
                       strict=True):
        normal = [e[0] for node in g["genotype"]["normal"] for e in node]
        assert m["param_free_edges"] == sum(op in ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")
                                            for op in normal) and m["edges"] == 8 and m["edges_reduce"] == 8
        p = torch.tensor(a["normal"]).softmax(-1)  # none, max_pool, avg_pool, skip: the first four DARTS ops
        assert m["param_free_mass"] == pytest.approx(float(p[:, :4].sum(-1).mean()), abs=1e-6)
        assert 0 <= m["param_free_mass_reduce"] <= 1
    assert "param-free edges" in (run_dir / "log.txt").read_text()
    alphas = {t: torch.zeros(14, 8) for t in ("normal", "reduce")}  # uniform: 4 of 8 ops are parameter-free
    stats = edge_stats(derive(space, alphas), alphas, space.ops)
    assert stats["param_free_mass"] == pytest.approx(0.5) and stats["param_free_mass_reduce"] == pytest.approx(0.5)


def test_warm_up_leaves_alpha_untouched_and_starts_tau_after_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert search_main([*TINY, "search.epochs=4", "search.warmup_epochs=2", "search.arch_lr=0.1",
                        f"run.dir={run_dir}", "--quiet"]) == 0
    alpha = [a["normal"] for a in records(run_dir, "alpha.jsonl")]
    assert alpha[0] == alpha[1] != alpha[2] != alpha[3]  # frozen through the warm-up, then it moves
    metrics = records(run_dir)
    assert [m["tau"] for m in metrics] == [10.0, 10.0, 10.0, pytest.approx(0.1)]  # the schedule starts after it
    assert all(0 <= m["valid_acc"] <= 100 for m in metrics)  # alpha batches are still measured while frozen
    assert "(warm-up: alpha frozen)" in (run_dir / "log.txt").read_text()


def test_the_skip_cap_holds_and_drops_the_weakest_skips_first() -> None:
    for space_name, rule in (("darts", "darts"), ("darts", "gdas"), ("nb201", "darts")):
        space = get_space(space_name)
        skip = space.ops.index("skip_connect")
        alphas = {t: torch.zeros(space.num_edges, space.num_ops) for t in space.cell_types}
        alphas["normal"][:, skip] = 2.0 + torch.arange(space.num_edges) / 10  # skip everywhere, later edges stronger
        for cap in (0, 1, 2):
            g = derive(space, alphas, rule, max_skip=cap)
            kept = [(src, node) for node, edges in zip(space.nodes, g.normal, strict=True)
                    for op, src in edges if op == "skip_connect"]
            assert len(kept) == cap, (space_name, rule, cap)
            strongest = sorted(((s, d) for s, d in space.edges), key=space.edges.index)[-cap:] if cap else []
            assert sorted(kept) == sorted(strongest)  # the strongest skips stay
        assert derive(space, alphas, rule, max_skip=None) == derive(space, alphas, rule)


def test_dropout_hits_parameter_free_ops_only_and_only_in_training() -> None:
    space = get_space("nb201")
    net = build_supernet(space, C=4, layers=1, num_classes=10, mixer=DARTS())
    net.set_param_free_dropout(0.5)
    edge = net.cells[0].edges[0]
    x = torch.ones(64, 4, 8, 8)
    skip, conv = space.ops.index("skip_connect"), space.ops.index("nor_conv_3x3")
    torch.manual_seed(0)
    out = edge.post(skip, edge.ops[skip](x))
    assert set(out.unique().tolist()) == {0.0, 2.0} and abs(float((out == 0).float().mean()) - 0.5) < 0.02
    y = edge.ops[conv](x)
    assert torch.equal(edge.post(conv, y), y)  # a conv keeps its output
    net.eval()
    assert torch.equal(edge.post(skip, x), x)  # no dropout outside training


def test_op_masks_remove_ops_without_renormalizing_and_decide_edges() -> None:
    alpha = torch.randn(6, 5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 2] = False
    mask[1] = torch.tensor([False, False, False, True, False])
    w = DARTS()(alpha, mask).weights
    p = alpha.softmax(-1)
    assert w[0, 2] == 0 and torch.allclose(w[0, [0, 1, 3, 4]], p[0, [0, 1, 3, 4]])  # the others keep their weight
    assert w[1].tolist() == [0, 0, 0, 1, 0] and torch.allclose(w[2:], p[2:])
    gdas = GDAS()
    picks = torch.stack([torch.tensor(gdas(alpha, mask).index) for _ in range(300)])
    assert not (picks[:, 0] == 2).any() and (picks[:, 1] == 3).all() and len(picks[:, 2].unique()) > 1


def test_perturbation_keeps_the_ops_the_supernet_needs() -> None:
    """With a planted accuracy that drops only when an edge loses its needed op, the selection finds those ops,
    whatever alpha says; in the DARTS space each node keeps its two most needed inputs."""
    for space_name in ("nb201", "darts"):
        space = get_space(space_name)
        rng = random.Random(3)
        real = [k for k, op in enumerate(space.ops) if op != "none"]
        needed = {t: [rng.choice(real) for _ in space.edges] for t in space.cell_types}
        weight = {t: [rng.random() for _ in space.edges] for t in space.cell_types}  # how much each edge matters
        net = build_supernet(space, C=4, layers=3 if space_name == "darts" else 1, num_classes=10, mixer=GDAS())
        for t in space.cell_types:  # alpha prefers another op everywhere
            net.alpha[t].data[:] = 0.0
            net.alpha[t].data[:, space.ops.index("skip_connect")] = 5.0

        def planted(model=net, space=space, needed=needed, weight=weight) -> dict[str, float]:
            masks = model.op_mask
            return {"accuracy": 100 - sum(weight[t][e] for t in space.cell_types for e in range(space.num_edges)
                                          if not masks[t][e, needed[t][e]])}

        g = perturb.select_by_perturbation(net, perturb.Measure("a planted accuracy", planted), 0,
                                           say=lambda _: None)
        assert net.op_mask is None
        for t, (nodes, _) in g.cells().items():
            for node, edges in zip(space.nodes, nodes, strict=True):
                ids = space.edges_into(node)
                keep = ids if space_name == "nb201" else sorted(ids, key=lambda e: -weight[t][e])[:2]
                assert sorted(edges) == sorted((space.ops[needed[t][e]], space.edges[e][0]) for e in keep)


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_op_masks_of_a_genotype_run_exactly_that_cell(space_name: str) -> None:
    from nas.space.derivation import genotype_of, masks_of

    space = get_space(space_name)
    rng = random.Random(0)
    for _ in range(20):
        g = random_genotype(space, rng, "darts")
        masks = masks_of(space, g)
        assert all((m.sum(-1) == 1).all() for m in masks.values())  # one op per edge: the cell alone
        assert genotype_of(space, masks) == g


def test_random_search_never_moves_alpha_and_picks_the_best_scored_cell(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    assert search_main(["search.epochs=2", "data.synthetic.train=128", "data.image_size=8", "data.batch_size=16",
                        "model.space=nb201", "model.C=4", "model.layers=1", "run.tensorboard=false",
                        "search.mixer=random", "search.derive=sample", "search.samples=4", "search.arch_lr=0.1",
                        f"run.dir={run_dir}"]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["a_opt"]["state"] == {}  # no alpha step, even with a large arch_lr
    assert not (run_dir / "alpha.jsonl").exists()  # and no log of an alpha that never moves
    log = (run_dir / "log.txt").read_text()
    best = log.split("scoring 4 random cells")[1].splitlines()[1]  # the first ranked line is the best cell
    assert str(read_genotype(run_dir / "genotype.json")) in best
    with pytest.raises(ConfigError, match="search.mixer=random never steps alpha"):
        load_config(SearchConfig, None, ["search.mixer=random"]).check()
