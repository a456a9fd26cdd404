"""The Python API: nas.search, nas.evaluate, nas.compare and nas.load_model return result objects; configs come
from files, dicts or config objects, with overrides as a dict or keyword arguments (``__`` for the dot); bad input
raises the CLI's error."""

from __future__ import annotations

from pathlib import Path

import pytest

import nas
from nas.api import make_config
from nas.config import SearchConfig
from nas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"search.epochs": 1, "data.synthetic.train": 64, "data.image_size": 8, "data.batch_size": 16,
         "model.C": 4, "model.layers": 3, "run.tensorboard": False}


def test_search_evaluate_and_load_model(tmp_path: Path) -> None:
    found = nas.search(ROOT / "configs/quickstart.yaml", SMALL, run__dir=str(tmp_path / "s"))
    assert isinstance(found, nas.SearchResult) and found.run_dir == tmp_path / "s"
    assert found.genotype.space == "darts" and [m["epoch"] for m in found.metrics] == [1] and found.budget is None
    trained = nas.evaluate(found, ROOT / "configs/eval/quick.yaml", train__epochs=1, data__synthetic__train=64,
                           data__image_size=8, model__C=4, model__layers=3, run__tensorboard=False,
                           run__dir=str(tmp_path / "e"))
    assert isinstance(trained, nas.EvalResult) and trained.genotype == found.genotype
    assert 0 <= trained.test_acc <= 100 and trained.params > 0 and trained.results["epochs"] == 1
    model = nas.load_model(trained.run_dir)
    assert model(model.example(2)).shape == (2, 10)
    assert trained.load_model().classes == model.classes


def test_configs_from_objects_and_dicts(tmp_path: Path) -> None:
    cfg = make_config(SearchConfig, {"search": {"epochs": 3}}, {"model.C": 4}, run__dir="x")
    assert cfg.search.epochs == 3 and cfg.model.C == 4 and cfg.run.dir == "x"
    again = make_config(SearchConfig, cfg, search__mixer="darts", search__tau_max=10.0)
    assert again.search.mixer == "darts" and again.model.C == 4
    given = {"search": {"epochs": 3}, "model": {"C": 8}}
    make_config(SearchConfig, given, {"search.epochs": 5}, model__C=4)
    assert given == {"search": {"epochs": 3}, "model": {"C": 8}}  # the caller's dict is left as it was
    with pytest.raises(ConfigError, match="unknown key 'search.epoch'"):
        nas.search(None, search__epoch=2)
    with pytest.raises(AttributeError):
        nas.no_such_thing  # noqa: B018


def test_budgeted_search_result(tmp_path: Path) -> None:
    found = nas.search(ROOT / "configs/search/gdas-nb201-cifar10.yaml", data__name="synthetic", data__root="x",
                       data__synthetic__train=64, data__batch_size=32, model__C=4, model__layers=1, search__epochs=1,
                       search__budget__metric="params", search__budget__target=0.4, run__tensorboard=False,
                       run__dir=str(tmp_path / "b"))
    assert found.budget is not None and found.budget["within"] and found.budget["cost"] <= 0.4


def test_compare(tmp_path: Path) -> None:
    study = nas.compare(None, {"methods": ["gdas"], "random.samples": 1, "model.space": "nb201", "model.C": 4,
                               "model.layers": 1, "data.synthetic.train": 64, "data.image_size": 8,
                               "data.batch_size": 16, "search.epochs": 1, "eval.train.epochs": 1,
                               "eval.model.C": 4, "eval.model.layers": 1, "eval.model.auxiliary_weight": 0.0,
                               "eval.model.drop_path": 0.0, "run.tensorboard": False, "run.threads": 1},
                        run__dir=str(tmp_path / "study"))
    assert study.study_dir == tmp_path / "study" and study.report_md.is_file()
    assert {m["method"] for m in study.report["methods"]} >= {"gdas"}
