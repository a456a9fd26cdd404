"""A comparison study as data: where each of its runs lives, the pieces that run them, and what state a run is in.

Each piece of a study is an ordinary search or training run directory under the study directory:

    STUDY/study.yaml                 the resolved study config
    STUDY/configs/search-<m>.yaml    the search recipe of method m;  STUDY/configs/train.yaml  the training recipe
    STUDY/search/<m>-s<seed>/        search runs
    STUDY/random/random-<i>/         random cells (genotype.json, cells/ drawings)
    STUDY/train/<cell>-e<seed>/      training runs, <cell> = <m>-s<seed> or random-<i>
    STUDY/bench/<cell>.json          with eval.benchmark (NB201): the cell's NAS-Bench-201 record, instead of trainings
    STUDY/report.md, report.json, plots/, log.txt, failures.json

Nothing here runs or writes: nas.study.run prepares and executes a study, nas.study.jobs runs its pieces,
nas.study.report reads what they recorded; the names of the files are nas.run.files's.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.config import (
    BENCHMARK_DATA,
    STUDY_SECTIONS,
    DataConfig,
    SearchConfig,
    SearchOptions,
    StudyConfig,
    TrainConfig,
    load_config,
)
from nas.errors import ConfigError, UserError
from nas.loader import from_dict, to_dict
from nas.run.files import (  # the run files, named once
    CONFIG,
    FAILURES,
    GENOTYPE,
    STUDY_FILE,
    TOOL,
    run_state,
)

# The keys that may change when a run or a study continues: how it runs, never what it computes.
RESUMABLE = ("run.device", "run.threads", "run.log_every", "run.checkpoint_every", "run.tensorboard")


def check_resumable(overrides: Sequence[str], study: bool = False) -> None:
    """Refuse an override of a key outside RESUMABLE when a run (or, with ``study``, a study) continues."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in RESUMABLE:
            continue
        if study:
            raise UserError(f"{key!r} cannot change in a study that has started (every run must see the same "
                            f"settings); valid when continuing: {', '.join(RESUMABLE)}")
        raise UserError(f"{key!r} cannot change when resuming (the run must continue as it started); "
                        f"valid on resume: {', '.join(RESUMABLE)}")


# ---------------------------------------------------------------------------------------------- the plan

def method_options(cfg: StudyConfig, name: str) -> SearchOptions:
    """The search section as method ``name`` runs it: the shared keys, its own per_method keys on top, and its
    mixer (the name itself unless per_method.<name>.mixer says otherwise)."""
    raw = dict(cfg.per_method.get(name) or {})
    for key in raw:
        if key in STUDY_SECTIONS:
            raise ConfigError(f"per_method.{name}.{key}: a method may set search.* keys only; every method of a "
                              "study searches the same data with the same supernet")
    if "mixer" not in raw:
        from nas.searching.mixing import mixer_names

        if name not in mixer_names():
            near = difflib.get_close_matches(name, mixer_names(), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"method {name!r} is not a mixer{hint}; valid: {', '.join(mixer_names())}, or any "
                              f"name with per_method.{name}.mixer set")
        raw["mixer"] = name
    return from_dict(SearchOptions, raw, f"per_method.{name}.", base=cfg.search)


def search_config(cfg: StudyConfig, method: str, seed: int) -> SearchConfig:
    """The complete, checked search config of one search of the study (run.dir left to the study)."""
    out = SearchConfig(seed=seed, data=cfg.data, model=cfg.model, search=method_options(cfg, method),
                       run=dataclasses.replace(cfg.run, dir="", overwrite=False, compile=False))
    try:
        out.check()
    except ConfigError as e:
        raise ConfigError(f"method {method!r}: {e}; keys that only some methods take belong under "
                          "per_method.<name>") from None
    return out


def train_config(cfg: StudyConfig, seed: int) -> TrainConfig:
    """The complete, checked training config of one retraining of the study (run.dir left to the study)."""
    e = cfg.eval
    data = dataclasses.replace(cfg.data, train_portion=DataConfig().train_portion,
                               subset=cfg.data.subset if e.data.subset is None else e.data.subset,
                               batch_size=e.data.batch_size, augment=e.data.augment, cutout=e.data.cutout)
    model = dataclasses.replace(e.model, space=cfg.model.space)
    out = TrainConfig(seed=seed, data=data, model=model, train=e.train,
                      run=dataclasses.replace(cfg.run, dir="", overwrite=False))
    try:
        return from_dict(TrainConfig, to_dict(out))  # every check a training config gets
    except ConfigError as err:
        raise ConfigError(f"the eval recipe (eval.*): {err}") from None


def benchmark_data(cfg: StudyConfig) -> str:
    """With eval.benchmark: the data set (data.name spelling) whose benchmark accuracy scores a cell."""
    from nas.space.spaces import get_space, spaces_where

    if not get_space(cfg.model.space).benchmarked:
        raise ConfigError(f"eval.benchmark applies only to model.space={spaces_where(lambda s: s.benchmarked)} "
                          f"(NAS-Bench-201's cells), not {cfg.model.space}; retrain the cells instead (leave "
                          "eval.benchmark empty)")
    name = cfg.eval.benchmark_data or cfg.data.name
    if name not in BENCHMARK_DATA:
        raise ConfigError(f"eval.benchmark scores a cell on one of NAS-Bench-201's data sets and data.name={name} "
                          f"is not one; set eval.benchmark_data to one of {', '.join(BENCHMARK_DATA)}")
    return name


def check_plan(cfg: StudyConfig) -> StudyConfig:
    """Refuse a study whose searches or retrainings could not run: every method's search config, and the eval
    recipe (or, with eval.benchmark, the data set that scores the cells), checked before anything starts."""
    for name in (*cfg.methods, *(m for m in cfg.per_method if m not in cfg.methods)):
        search_config(cfg, name, cfg.seeds[0])
    if cfg.eval.benchmark:
        benchmark_data(cfg)
    else:
        train_config(cfg, cfg.eval.seeds[0])
    return cfg


def load_plan(path: str | Path | None, overrides: Sequence[str] = ()) -> StudyConfig:
    """A study config from YAML (or the defaults) and overrides, with every check including the plan's."""
    return check_plan(load_config(StudyConfig, path, list(overrides)))


# ---------------------------------------------------------------------------------------------- the layout

@dataclass(frozen=True)
class SearchRun:
    method: str
    seed: int
    dir: Path


@dataclass(frozen=True)
class Cell:
    """A genotype of the study: found by a search (``source`` is its run directory) or drawn at random."""

    id: str
    method: str          # a method's name, or "random"
    seed: int | None     # the search seed (None for a random cell)
    source: Path         # the folder whose genotype.json it is


@dataclass(frozen=True)
class StudyLayout:
    dir: Path
    cfg: StudyConfig
    searches: list[SearchRun]
    cells: list[Cell]
    trainings: dict[str, list[tuple[int, Path]]]   # cell id -> (training seed, run directory); none with a benchmark

    def lookup_file(self, cell: Cell) -> Path:
        """With eval.benchmark: where the cell's NAS-Bench-201 record is written."""
        return self.dir / "bench" / f"{cell.id}.json"


def layout(study_dir: Path, cfg: StudyConfig) -> StudyLayout:
    """Every search, cell and training of the study, and where each lives."""
    searches = [SearchRun(m, s, study_dir / "search" / f"{m}-s{s}") for s in cfg.seeds for m in cfg.methods]
    cells = [Cell(f"{r.method}-s{r.seed}", r.method, r.seed, r.dir) for r in searches]
    cells += [Cell(f"random-{i}", "random", None, study_dir / "random" / f"random-{i}")
              for i in range(cfg.random.samples)]
    seeds = () if cfg.eval.benchmark else cfg.eval.seeds  # a benchmark study looks its cells up instead
    trainings = {c.id: [(e, study_dir / "train" / f"{c.id}-e{e}") for e in seeds] for c in cells}
    return StudyLayout(study_dir, cfg, searches, cells, trainings)


def load_study(study_dir: str | Path, overrides: Sequence[str] = ()) -> StudyLayout:
    """The layout of an existing study, from its study.yaml; ``overrides`` may change only RESUMABLE keys."""
    path = Path(study_dir)
    if not path.is_dir():
        raise UserError(f"study directory {str(study_dir)!r} is not a directory")
    if not (path / STUDY_FILE).is_file():
        hint = " (it is a run directory: use search.py or evaluate.py --resume)" if (path / CONFIG).exists() else ""
        raise UserError(f"{str(study_dir)!r} is not a study directory: it has no {STUDY_FILE}{hint}")
    check_resumable(overrides, study=True)
    return layout(path, load_plan(path / STUDY_FILE, overrides))


def read_failures(study_dir: Path) -> dict[str, str]:
    """failures.json: each run or lookup that failed, and why ({} when nothing has failed)."""
    path = study_dir / FAILURES
    return dict(json.loads(path.read_text())) if path.exists() else {}


# ---------------------------------------------------------------------------------------------- lookups

def lookup_record(lay: StudyLayout, cell: Cell) -> dict[str, Any] | None:
    """With eval.benchmark: the cell's NAS-Bench-201 record, or None when its genotype or its record is missing, or
    the record is stale (of another genotype than the one now in the cell's folder)."""
    from nas.bench201 import arch_string
    from nas.space.genotype import read_genotype

    path = lay.lookup_file(cell)
    if not (cell.source / GENOTYPE).exists() or not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record if record["arch"] == arch_string(read_genotype(cell.source / GENOTYPE)) else None


def unscored(lay: StudyLayout) -> list[Cell]:
    """With eval.benchmark: the cells whose genotype exists but whose benchmark record is missing or stale."""
    return [c for c in lay.cells if (c.source / GENOTYPE).exists() and lookup_record(lay, c) is None]


# ---------------------------------------------------------------------------------------------- the pieces

@dataclass(frozen=True)
class Piece:
    """One run of a study and the command line that starts it (after ``python -m nas``)."""

    name: str                 # its path under the study directory: search/gdas-s0, train/random-2-e0
    kind: str                 # search or train
    dir: Path
    args: tuple[str, ...]     # a new run: the recipe and its overrides
    needs: Path | None = None  # a training of a searched cell: the search run whose genotype.json it reads

    def status(self) -> str:
        """The run's state (run_state): done, interrupted, started or not started."""
        return run_state(self.dir, self.kind)

    def ready(self) -> bool:
        """Whether it can start: the cell it trains has been found."""
        return self.needs is None or (self.needs / GENOTYPE).exists()

    def command(self, extra: Sequence[str] = ()) -> list[str]:
        """An interrupted run resumes from its checkpoint; a started one starts again over what it left."""
        status = self.status()
        if status == "interrupted":
            return [TOOL[self.kind], "--resume", str(self.dir), *extra]
        return [TOOL[self.kind], *self.args, *(["run.overwrite=true"] if status == "started" else []), *extra]


def pieces(lay: StudyLayout) -> list[Piece]:
    """Every run in the order they start: searches (seed by seed, so that methods keep level), trainings of random
    cells, then trainings of searched cells."""
    d = lay.dir
    out = [Piece(f"search/{r.dir.name}", "search", r.dir,
                 ("--config", str(d / "configs" / f"search-{r.method}.yaml"), f"seed={r.seed}", f"run.dir={r.dir}"))
           for r in lay.searches]
    drawn = [c for c in lay.cells if c.method == "random"]
    found = [c for c in lay.cells if c.method != "random"]
    for cells, searched in ((drawn, False), (found, True)):
        for cell in cells:
            for seed, run_dir in lay.trainings[cell.id]:
                out.append(Piece(f"train/{run_dir.name}", "train", run_dir,
                                 ("--config", str(d / "configs" / "train.yaml"), "--genotype", str(cell.source),
                                  f"seed={seed}", f"run.dir={run_dir}"), needs=cell.source if searched else None))
    return out
