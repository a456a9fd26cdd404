"""Selection without alpha: the final stage's successive halving, Zero-Cost-PT on a supernet, zero-cost searches in
both spaces, and the keys that set them."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
import torch

from nas.config import ConfigError, SearchConfig, load_config
from nas.data.datasets import make_synthetic
from nas.data.pipeline import Batches
from nas.searching.bilevel import run_search
from nas.searching.finalists import rungs, successive_halving
from nas.searching.mixing import create_mixer
from nas.searching.perturb import Measure, accuracy, select_by_perturbation, supernet_score
from nas.searching.supernet import build_supernet
from nas.space.derivation import random_genotype
from nas.space.genotype import check_genotype, read_genotype
from nas.space.nb201 import from_nb201_string
from nas.space.spaces import get_space

EMPTY = from_nb201_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")  # its output is 0: it cannot learn
CONV = from_nb201_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                         "nor_conv_3x3~2|")


def test_rungs_halve_the_cells_and_double_the_epochs() -> None:
    assert rungs(16, 8, 2) == [(16, 1), (8, 2), (4, 4), (2, 8)]
    assert rungs(5, 8, 2) == [(5, 4), (2, 8)]
    assert rungs(9, 9, 3) == [(9, 3), (3, 9)]
    assert rungs(3, 4, 2) == [(3, 4)]
    assert rungs(32, 2, 2)[0] == (32, 1)  # never below one epoch


@pytest.fixture(scope="module")
def batches() -> Batches:
    data = make_synthetic(128, 4, 8, seed=0)
    return Batches(data, batch_size=32, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True)


def test_successive_halving_trains_each_rung_as_planned_and_the_learner_wins(batches: Batches) -> None:
    rng = random.Random(0)
    cells = [EMPTY, *(random_genotype(get_space("nb201"), rng) for _ in range(2)), CONV]
    lines: list[str] = []
    winner, records = successive_halving(cells, batches, None, C=4, layers=1, num_classes=4, epochs=4, seed=0,
                                         say=lines.append)
    assert [r["epochs"] for r in records].count(4) == 2 and [r["epochs"] for r in records].count(2) == 2
    assert all(r["tse"] == pytest.approx(sum(r["train_loss"])) for r in records)
    finalists = [r for r in records if r["epochs"] == 4]
    assert str(winner) == min(finalists, key=lambda r: r["tse"])["genotype"]
    assert [r["out_after_rung"] for r in records if r["genotype"] == str(winner)] == [None]
    assert all(r["out_after_rung"] == 1 for r in records if r["epochs"] == 2)
    empty = next(r for r in records if r["genotype"] == str(EMPTY))
    assert empty["epochs"] == 2 and empty["train_loss"][0] == pytest.approx(torch.log(torch.tensor(4.0)).item(),
                                                                            abs=0.05)  # chance: it cannot learn
    assert "rungs of 4 cells to epoch 2, 2 cells to epoch 4" in lines[0] and len(lines) == 3
    again, repeat = successive_halving(cells, batches, None, C=4, layers=1, num_classes=4, epochs=4, seed=0,
                                       say=lambda _: None)
    assert again == winner and repeat == records  # the same batches, order and initialisation: the same figures


def test_successive_halving_by_validation_accuracy_records_it(batches: Batches) -> None:
    winner, records = successive_halving([EMPTY, CONV], batches, batches, C=4, layers=1, num_classes=4, epochs=2,
                                         rank="accuracy", seed=0, say=lambda _: None)
    assert all(len(r["valid_acc"]) == r["epochs"] == 2 for r in records)
    assert str(winner) == max(records, key=lambda r: r["valid_acc"][-1])["genotype"]
    with pytest.raises(ValueError, match="needs validation batches"):
        successive_halving([EMPTY, CONV], batches, None, C=4, layers=1, num_classes=4, epochs=1, rank="loss")


def test_successive_halving_ranks_by_the_mean_of_the_last_epochs_it_measures(batches: Batches) -> None:
    cells = [EMPTY, CONV, EMPTY, CONV]
    winner, records = successive_halving(cells, batches, batches, C=4, layers=1, num_classes=4, epochs=4, eta=2,
                                         rank="accuracy", average=2, seed=0, say=lambda _: None)
    # rungs: 4 cells to epoch 2 (both epochs measured), then 2 to epoch 4 (epochs 3 and 4 measured)
    for r in records:
        measured = [a is not None for a in r["valid_acc"]]
        assert measured == ([True, True] if r["epochs"] == 2 else [True, True, True, True])
    last = [r for r in records if r["epochs"] == 4]
    assert str(winner) == max(last, key=lambda r: sum(r["valid_acc"][2:]) / 2)["genotype"] == str(CONV)
    _, once = successive_halving(cells, batches, batches, C=4, layers=1, num_classes=4, epochs=4, eta=4,
                                 rank="loss", average=1, seed=0, say=lambda _: None)
    assert all(r["epochs"] == 4 and [v is None for v in r["valid_loss"]] == [True, True, True, False] for r in once)


@pytest.mark.parametrize("mixer", ["gdas", "snas", "drnas"])
def test_perturbation_accuracy_judges_every_candidate_on_the_same_samples(mixer: str, batches: Batches) -> None:
    torch.manual_seed(0)
    model = build_supernet("nb201", C=4, layers=1, num_classes=4, mixer=create_mixer(mixer))
    model.generator = torch.Generator().manual_seed(7)  # as the search loop sets it
    model.set_step("none")
    outputs: list[torch.Tensor] = []
    model.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().clone()))
    own, global_state = model.generator.get_state(), torch.get_rng_state()
    first = accuracy(model, batches, seed=3, amp=contextlib.nullcontext())
    n = len(outputs)
    second = accuracy(model, batches, seed=3, amp=contextlib.nullcontext())
    assert first == second and all(torch.equal(a, b) for a, b in zip(outputs[:n], outputs[n:], strict=True))
    accuracy(model, batches, seed=4, amp=contextlib.nullcontext())
    assert not all(torch.equal(a, b) for a, b in zip(outputs[:n], outputs[2 * n:], strict=True))  # other noise
    assert torch.equal(model.generator.get_state(), own) and torch.equal(torch.get_rng_state(), global_state)


def test_perturbation_keeps_the_op_whose_removal_costs_the_most() -> None:
    model = build_supernet("nb201", C=4, layers=1, num_classes=3, mixer=create_mixer("gdas"))
    conv = model.space.ops.index("nor_conv_3x3")

    def fn() -> dict[str, float]:  # a measure that is higher the more 3x3 convolutions the mask allows
        mask = model.op_mask["normal"]
        return {"convs": float(mask[:, conv].sum()), "ties": 0.0}

    g = select_by_perturbation(model, Measure("test", fn), seed=0, say=lambda _: None)
    assert all(op == "nor_conv_3x3" for node in g.normal for op, _ in node)
    assert model.op_mask is None


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_zero_cost_pt_derives_a_valid_cell_and_leaves_the_supernet_as_it_was(space: str) -> None:
    torch.manual_seed(0)
    layers = 1 if space == "nb201" else 3
    model = build_supernet(space, C=4, layers=layers, num_classes=3, mixer=create_mixer("gdas"))
    model.set_step("none")
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure = supernet_score(model, ["naswot", "synflow"], "logrank", batch)
    first = measure.fn()
    assert measure.fn() == measure.fn() == first  # an unchanged supernet and mask measure the same every time
    lines: list[str] = []
    g = select_by_perturbation(model, measure, seed=0, say=lines.append)
    assert check_genotype(g) == g and g.space == space
    assert model.mixer.name == "gdas" and model.op_mask is None and model._step == "none"
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # no weight, no BatchNorm statistic moved
    assert all(p.grad is None for p in model.parameters())
    assert "naswot + synflow (log-rank sum) on 8 images" in lines[0]


SMALL = ["data.synthetic.train=96", "data.image_size=8", "data.batch_size=16", "model.C=4", "run.tensorboard=false",
         "search.epochs=0"]


@pytest.mark.parametrize("space,extra", [
    ("nb201", ["search.derive=score", "search.score=[synflow,zico,jacob_cov]", "search.samples=6",
               "search.final.cells=4", "search.final.epochs=2"]),
    ("nb201", ["search.derive=score", "search.score=[naswot,params]", "search.ensemble=vote", "search.prior=2",
               "search.prior_samples=6", "search.pool=alpha", "search.samples=4"]),
    ("nb201", ["search.derive=perturb", "search.perturb_by=score", "search.score=[zico]"]),
    ("nb201", ["search.derive=score", "search.score=[naswot]", "search.samples=5", "search.final.cells=3",
               "search.final.epochs=2", "search.final.image_size=4", "search.final.together=true",
               "search.final.rank=loss", "search.final.inits=2", "search.final.local_rounds=1",
               "search.final.local_size=2"]),
    ("nb201", ["search.derive=score", "search.score=[naswot]", "search.samples=4", "search.final.cells=3",
               "search.final.shared_epochs=2", "search.final.shared_rank=accuracy"]),
    ("darts", ["search.derive=score", "search.score=[naswot,synflow]", "search.samples=3", "search.final.cells=2",
               "search.final.epochs=1"]),
    ("darts", ["search.derive=perturb", "search.perturb_by=score", "search.score=[naswot]"]),
], ids=["nb201-final", "nb201-prior-vote", "nb201-zc-pt", "nb201-final-small-together", "nb201-final-shared",
      "darts-final", "darts-zc-pt"])
def test_zero_cost_searches_end_with_a_valid_genotype(tmp_path: Path, space: str, extra: list[str]) -> None:
    layers = "model.layers=1" if space == "nb201" else "model.layers=3"
    cfg = load_config(SearchConfig, None, [*SMALL, f"model.space={space}", layers, *extra, f"run.dir={tmp_path}"])
    run_dir = run_search(cfg, quiet=True)
    g = check_genotype(read_genotype(run_dir / "genotype.json"))
    assert g.space == space
    final = run_dir / "final.json"
    assert final.exists() == any(k.startswith("search.final.cells") for k in extra)
    if final.exists():
        record = json.loads(final.read_text())
        assert record["winner"] == str(g)
        assert sum(c.get("local_round", 0) == 0 for c in record["cells"]) == cfg.search.final.cells
    log = (run_dir / "log.txt").read_text()  # 48 images in the alpha half, the default score batch is 64
    assert "search.score_batch=64 is more than the 48 images of the alpha half; the zero-cost scores read all 48" in log
    assert " 0 epochs" in log and "1 epochs" not in log and "1 cells" not in log
    if "search.final.image_size=4" in extra:
        assert "trained together as one module, each from 2 initialisations" in log and "images of 4 px" in log
        assert "local search, round 1/1: 2 neighbours of" in log
        assert len(record["cells"]) == 5 and [c["local_round"] for c in record["cells"]] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("overrides,message", [
    (["search.final.cells=4"], "search.final.cells=4 applies only to search.derive=sample or score (got "
                               "search.derive=darts)"),
    (["search.derive=score", "search.samples=3", "search.final.cells=4"], "valid: 2 <= final.cells <= samples"),
    (["search.final.epochs=3"], "search.final.epochs=3 applies only to search.derive=sample or score"),
    (["search.derive=score", "search.final.epochs=3"], "search.final.* applies only with search.final.cells > 0"),
    (["search.score=[naswot]", "search.score_batch=16"], "search.score_batch applies only to the zero-cost rules"),
    (["search.derive=score", "search.score=[zicoo]"], "search.score='zicoo' is not a score (did you mean 'zico'?)"),
    (["search.derive=score", "search.score=[]"], "search.score=[] has the wrong type; expected a non-empty list"),
    (["search.derive=score", "search.score=[zico]", "search.score_batch=2"], "search.score_batch=2 is too small"),
    (["search.perturb_by=score"], "search.perturb_by=score applies only to search.derive=perturb (got "
                                  "search.derive=darts)"),
    (["search.epochs=0"], "search.epochs=0 trains nothing"),
    (["search.pool=alpha"], "search.pool=alpha applies only to search.derive=score (got search.derive=darts)"),
    (["search.derive=score", "search.final.cells=2", "search.final.average=2"],
     "search.final.average=2 averages validation figures; rank=tse reads none"),
    (["search.derive=score", "search.final.cells=2", "search.final.rank=accuracy", "search.final.epochs=3",
      "search.final.average=4"], "search.final.average=4 is more than search.final.epochs=3; valid: 1 to 3"),
    (["search.derive=score", "search.final.cells=2", "search.final.shared_epochs=3", "search.final.inits=2"],
     "search.final.shared_epochs trains the finalists as one weight-sharing supernet"),
    (["search.derive=score", "search.final.cells=2", "search.final.local_size=3"],
     "search.final.local_size=3 applies only with search.final.local_rounds > 0"),
    (["search.derive=score", "search.final.cells=2", "search.final.image_size=2"],
     "search.final.image_size=2 is out of range; valid: 4 <= image_size"),
])
def test_bad_selection_keys_are_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(SearchConfig, None, ["model.space=nb201", "model.layers=1", *overrides])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_small_data_recipe_runs_unchanged_in_the_darts_space(tmp_path: Path) -> None:
    """The small-data recipe's own keys, with only its sizes shrunk, in the DARTS space: the cells are scored, the
    finalists trained (resized, ranked, searched around), and a valid DARTS genotype is written."""
    from nas.cli import search_main

    recipe = load_config(SearchConfig, "configs/search/zc-train-nb201-small.yaml")
    shrink = ["data.name=synthetic", "data.synthetic.train=128", "data.image_size=16", "data.batch_size=8",
              "model.space=darts", "model.layers=3", "model.C=4", "search.samples=4", "search.score_batch=8",
              "search.final.cells=3", "search.final.epochs=2", "search.final.eta=3", "search.final.average=1",
              "run.threads=1", "run.tensorboard=false", "--quiet"]
    if recipe.search.final.local_rounds:  # the recipe searches around its best finalist: two neighbours a round
        shrink.append("search.final.local_size=2")
    if recipe.search.final.image_size:  # the recipe resizes its finalists: here to half the shrunk images
        shrink.append("search.final.image_size=8")
    run = tmp_path / "run"
    assert search_main(["--config", "configs/search/zc-train-nb201-small.yaml", *shrink, f"run.dir={run}"]) == 0
    g = check_genotype(read_genotype(run / "genotype.json"))
    assert g.space == "darts" and len(g.normal) == 4 and len(g.reduce) == 4  # 4 nodes of 2 inputs each
    final = json.loads((run / "final.json").read_text())
    assert len(final["cells"]) >= 3
