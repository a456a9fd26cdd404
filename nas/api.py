"""The Python API, for notebooks and scripts: the tools of ``python -m nas`` as functions that return results.

    import nas
    found = nas.search("configs/quickstart.yaml", search__epochs=2, run__dir="runs/api-search")
    trained = nas.evaluate(found.genotype, "configs/eval/quick.yaml", train__epochs=1, run__dir="runs/api-eval")
    model = nas.load_model(trained.run_dir)

A config is a recipe file, a dict of its keys, a config object (nas.config.SearchConfig, TrainConfig, StudyConfig)
or None (the defaults). Keys are overridden by ``overrides`` ({"search.epochs": 2}) and by keyword arguments, where
a double underscore stands for the dot (search__epochs=2). The same checks run as on the command line, and bad input
raises nas.errors.UserError (ConfigError, DataError, ...) with the message the CLI would print.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nas.config import SearchConfig, StudyConfig, TrainConfig, load_config
from nas.loader import from_dict, parse_overrides, set_dotted, to_dict
from nas.model import TrainedModel, load_model
from nas.run.files import BUDGET, GENOTYPE, METRICS, REPORT_JSON, REPORT_MD
from nas.space.genotype import Genotype, load_genotype, read_genotype

C = TypeVar("C")
Config = str | Path | Mapping[str, Any] | SearchConfig | TrainConfig | StudyConfig | None

__all__ = ["EvalResult", "SearchResult", "StudyResult", "compare", "evaluate", "load_model", "search"]


@dataclass(frozen=True)
class SearchResult:
    """A finished search: its run directory, the genotype found, every epoch's metrics and, with a budget, the
    found cell's cost against it (budget.json)."""

    run_dir: Path
    genotype: Genotype
    metrics: list[dict[str, Any]] = field(repr=False)
    budget: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvalResult:
    """A finished training: its run directory, test accuracy after the last epoch, size, and results.json."""

    run_dir: Path
    test_acc: float
    params: int
    flops: int
    genotype: Genotype
    results: dict[str, Any] = field(repr=False)

    def load_model(self, device: str = "cpu") -> TrainedModel:
        """The trained network (nas.load_model of the run directory)."""
        return load_model(self.run_dir, device)


@dataclass(frozen=True)
class StudyResult:
    """A finished study: its directory, report.md, and report.json's content."""

    study_dir: Path
    report_md: Path
    report: dict[str, Any] = field(repr=False)


def make_config(cls: type[C], config: Config, overrides: Mapping[str, Any] | None = None, **keys: Any) -> C:
    """The checked config of kind ``cls`` from a recipe file, a dict or a config object, with overrides."""
    given = {**(overrides or {}), **{k.replace("__", "."): v for k, v in keys.items()}}
    items = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in given.items()]
    if config is None or isinstance(config, (str, Path)):
        return load_config(cls, config, items)
    raw = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else to_dict(config)  # the caller's stays
    for dotted, value in parse_overrides(items).items():
        set_dotted(raw, dotted, value)
    return from_dict(cls, raw)


def _name(config: Config, default: str) -> str:
    return Path(config).stem if isinstance(config, (str, Path)) else default


def search(config: Config = None, overrides: Mapping[str, Any] | None = None, *, quiet: bool = True,
           **keys: Any) -> SearchResult:
    """Run a search (as ``python -m nas search``) and return its result; ``quiet`` prints nothing (log.txt has it)."""
    from nas.run.runlog import read_jsonl
    from nas.searching.bilevel import run_search

    cfg = make_config(SearchConfig, config, overrides, **keys)
    run_dir = run_search(cfg, name=_name(config, "search"), quiet=quiet)
    budget = json.loads((run_dir / BUDGET).read_text()) if (run_dir / BUDGET).exists() else None
    metrics = read_jsonl(run_dir / METRICS) if (run_dir / METRICS).exists() else []
    return SearchResult(run_dir, read_genotype(run_dir / GENOTYPE), metrics, budget)


def evaluate(genotype: Genotype | str | Path | SearchResult, config: Config = None,
             overrides: Mapping[str, Any] | None = None, *, quiet: bool = True, **keys: Any) -> EvalResult:
    """Train a genotype from scratch and test it (as ``python -m nas evaluate``). ``genotype``: a Genotype, a
    SearchResult, or what --genotype takes (a published name, a file, a run directory, an NB201 string)."""
    from nas.train import run_train

    if isinstance(genotype, SearchResult):
        genotype = genotype.genotype
    g = genotype if isinstance(genotype, Genotype) else load_genotype(str(genotype))
    cfg = make_config(TrainConfig, config, overrides, **keys)
    results = run_train(cfg, g, name=_name(config, "train"), quiet=quiet)
    return EvalResult(Path(results["run_dir"]), results["final_test_acc"], results["params"], results["flops"], g,
                      results)


def compare(config: Config = None, overrides: Mapping[str, Any] | None = None, *, jobs: int = 1,
            quiet: bool = True, **keys: Any) -> StudyResult:
    """Run a comparison study (as ``python -m nas compare``) and return where its report is."""
    from nas.study.plan import check_plan
    from nas.study.run import run_study

    cfg = check_plan(make_config(StudyConfig, config, overrides, **keys))
    study_dir = run_study(cfg, _name(config, "compare"), jobs=jobs, quiet=quiet)
    return StudyResult(study_dir, study_dir / REPORT_MD, json.loads((study_dir / REPORT_JSON).read_text()))
