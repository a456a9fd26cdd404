"""A comparison study: every method searches with every seed on the same data, bilevel split and supernet; random
cells are drawn from the space under the derivation rule's constraints (the baseline of Li & Talwalkar 2019 and
Yang et al., ICLR 2020, "NAS evaluation is frustratingly hard"); every genotype is trained from scratch with one
shared recipe for every training seed, or, with eval.benchmark, looked up in NAS-Bench-201.

Each piece is an ordinary search or training run directory under the study directory (nas.study.plan has the layout),
started as its own process (``python -m nas search|evaluate ...``, nas.study.jobs), so --resume, TensorBoard,
nas.space.plot and nas.space.genotype work on it, and a scheduler can run the same command lines (--plan). This module
prepares a study, scores its cells by benchmark lookups, and executes it; the report is built from what the runs record
(nas.study.report).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from nas.config import StudyConfig, dump_yaml
from nas.errors import RunsFailed, UserError
from nas.run.files import BASELINES, CONFIG, FAILURES, GENOTYPE, LOCK, SPACE, STUDY_DIRS, STUDY_FILE, STUDY_FILES
from nas.study.plan import (
    Piece,
    StudyLayout,
    check_plan,
    layout,
    load_study,
    pieces,
    read_failures,
    search_config,
    train_config,
    unscored,
)
from nas.text import count

# ---------------------------------------------------------------------------------------------- prepare

def study_dir_of(cfg: StudyConfig, name: str) -> Path:
    """Check the data and the study directory (run.dir, or a new one under runs/) and return its path; creates
    nothing."""
    from nas.data.pipeline import load_dataset

    if cfg.data.name != "synthetic":  # a missing or damaged data set fails here, not in the first run
        for split in ("train", "test"):
            load_dataset(cfg.data, split)
    if cfg.eval.benchmark:  # and a benchmark file that cannot be read
        open_benchmark(cfg.eval.benchmark)
    study_dir = Path(cfg.run.dir or os.path.join("runs", f"{name}-{datetime.now():%Y%m%d-%H%M%S}"))
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"run.dir={str(study_dir)!r} is a file, not a directory")
    if (study_dir / CONFIG).exists():
        raise UserError(f"run.dir={str(study_dir)!r} holds a run ({CONFIG}), not a study; choose another run.dir")
    if (study_dir / STUDY_FILE).exists() and not cfg.run.overwrite:
        raise UserError(f"run.dir={str(study_dir)!r} already holds a study ({STUDY_FILE}); continue it with "
                        f"python -m nas compare --resume {study_dir}, rebuild its report with --report, choose "
                        "another run.dir, or set run.overwrite=true to replace it")
    return study_dir


def prepare_study(cfg: StudyConfig, study_dir: Path) -> None:
    """Create the checked study directory (study_dir_of): the resolved config, one recipe file per method and one
    for training, and the random cells; with run.overwrite, first remove the study it holds. The caller holds
    the study's lock (jobs.study_lock), so that no other compare is running the study it replaces."""
    from nas.run.runlog import atomic_write_text
    from nas.space.derivation import alpha_rule, random_genotype
    from nas.space.plot import draw_cells
    from nas.space.spaces import search_space

    if (study_dir / STUDY_FILE).exists():  # run.overwrite=true (study_dir_of refused it otherwise)
        for f in STUDY_FILES:
            if f != LOCK:  # held by this process
                (study_dir / f).unlink(missing_ok=True)
        for sub in STUDY_DIRS:
            shutil.rmtree(study_dir / sub, ignore_errors=True)
    (study_dir / "configs").mkdir(parents=True, exist_ok=True)

    for method in dict.fromkeys([*cfg.methods, *cfg.per_method]):
        atomic_write_text(study_dir / "configs" / f"search-{method}.yaml", dump_yaml(search_config(cfg, method, 0)))
    if not cfg.eval.benchmark:
        atomic_write_text(study_dir / "configs" / "train.yaml", dump_yaml(train_config(cfg, cfg.eval.seeds[0])))
    space = search_space(cfg.model.space, cfg.model.ops, cfg.model.macro)
    rng = random.Random(cfg.random.seed)
    for cell in layout(study_dir, cfg).cells:
        if cell.method == "random":
            g = random_genotype(space, rng, alpha_rule(cfg.search.derive))
            cell.source.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cell.source / GENOTYPE, g.to_json())
            draw_cells(g, cell.source / "cells")
    atomic_write_text(study_dir / STUDY_FILE, dump_yaml(cfg))  # last: its presence means the study is complete


# ---------------------------------------------------------------------------------------------- score

@functools.lru_cache(maxsize=1)
def open_benchmark(path: str) -> Any:
    """The NAS-Bench-201 API over ``path``, read once per process (a whole NATS-tss file is large)."""
    from nas.bench201 import load_benchmark

    return load_benchmark(path)


def score_cells(lay: StudyLayout, log: Any, failures: dict[str, str]) -> None:
    """Look every found or drawn cell that has no record yet up in the benchmark (eval.benchmark) and write its
    record to bench/<cell>.json; a cell that cannot be looked up is recorded in ``failures`` as bench/<cell>."""
    from nas.bench201 import DATASETS, BenchmarkError, baselines, describe_epoch, epoch_metrics, lookup
    from nas.run.runlog import atomic_write_text
    from nas.space.genotype import read_genotype

    todo = unscored(lay)
    if not todo:
        return
    try:
        api = open_benchmark(lay.cfg.eval.benchmark)
    except BenchmarkError as e:
        for cell in todo:
            failures[f"bench/{cell.id}"] = str(e)
        log.print(f"FAILED the NAS-Bench-201 lookup of {count(len(todo), 'cell')}: {e}")
        return
    (lay.dir / "bench").mkdir(exist_ok=True)
    if hasattr(api, "distribution"):  # the table holds the whole space: its exact distribution, for the report
        atomic_write_text(lay.dir / "bench" / SPACE,
                          json.dumps({d: api.distribution(d) for d in DATASETS}, indent=2) + "\n")
    if not (lay.dir / "bench" / BASELINES).exists():  # the cells a user would pick without a search, for the report
        atomic_write_text(lay.dir / "bench" / BASELINES, json.dumps(baselines(api), indent=2) + "\n")
    for cell in todo:
        try:
            record = lookup(api, read_genotype(cell.source / GENOTYPE))
        except BenchmarkError as e:
            failures[f"bench/{cell.id}"] = str(e)
            log.print(f"FAILED bench/{cell.id}: {e}")
            continue
        atomic_write_text(lay.lookup_file(cell), json.dumps(record, indent=2) + "\n")
        failures.pop(f"bench/{cell.id}", None)
        log.print(f"NAS-Bench-201: {cell.id}: {describe_epoch(epoch_metrics(record))}")


def write_failures(lay: StudyLayout, failures: dict[str, str]) -> None:
    from nas.run.runlog import atomic_write_text

    atomic_write_text(lay.dir / FAILURES, json.dumps(failures, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- execute

def run_study(cfg: StudyConfig | None = None, name: str = "compare", *, resume: Path | None = None,
              overrides: Sequence[str] = (), jobs: int = 1, plan: bool = False, quiet: bool = False,
              nproc: int = 1) -> Path:
    """Run a study from ``cfg`` (or continue the one in ``resume``: finished runs are skipped and interrupted ones
    resumed from their checkpoints); with ``plan``, print the command lines of the runs still to do instead."""
    from nas.study.jobs import print_plan, study_lock

    if jobs < 1:
        raise UserError(f"--jobs {jobs} is not valid; valid: 1 or more")
    if nproc < 1:
        raise UserError(f"--nproc {nproc} is not valid; valid: 1 or more")
    if resume is None:
        assert cfg is not None
        checked = check_plan(cfg)
        study_dir, extra = study_dir_of(checked, name), []
        new = not study_dir.exists()
        try:
            study_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write run.dir={str(study_dir)!r}: {e.strerror or e}") from None
    else:
        study_dir, extra = load_study(resume, overrides).dir, list(overrides)  # checked before the lock is taken
    try:
        with study_lock(study_dir):  # before anything is replaced or run: no other compare has the study
            if resume is None:
                prepare_study(checked, study_dir)
                lay = layout(study_dir, checked)
            else:
                lay = load_study(study_dir, overrides)
            todo = [p for p in pieces(lay) if p.status() != "done"]
            if plan:
                print_plan(todo, lay.dir, nproc, benchmark=bool(lay.cfg.eval.benchmark))
                return lay.dir
            execute(lay, todo, jobs, extra, quiet, resumed=resume is not None, nproc=nproc)
    except BaseException:
        if resume is None and new and not (study_dir / STUDY_FILE).exists():  # nothing of it was made
            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    return lay.dir


def execute(lay: StudyLayout, todo: list[Piece], jobs: int, extra: Sequence[str], quiet: bool, resumed: bool,
            nproc: int = 1) -> None:
    """Run what is left of the study, look its cells up (eval.benchmark), write its report, and say how it ended
    (Stopped, RunsFailed or done)."""
    from nas.run.checkpoint import Stopped
    from nas.run.runlog import RunLog, record_session
    from nas.run.runtime import resolve_device
    from nas.study.jobs import job_settings, run_pieces
    from nas.study.report import write_report

    study_dir, cfg = lay.dir, lay.cfg
    log = RunLog(study_dir, quiet)
    record_session(study_dir, resolve_device(cfg.run.device), resumed=resumed, kind="study")
    failures = read_failures(study_dir)
    slots = job_settings(cfg, jobs, nproc)
    n_search = sum(1 for p in todo if p.kind == "search")
    cells = count(len(lay.cells), "cell")
    scoring = f"{cells} looked up in NAS-Bench-201 ({cfg.eval.benchmark})" if cfg.eval.benchmark \
        else f"{cells} x {count(len(cfg.eval.seeds), 'training seed')}"
    log.print(f"study {study_dir}: {count(len(cfg.methods), 'method')} x {count(len(cfg.seeds), 'seed')}, "
              f"{cfg.random.samples} random cells, {scoring}; to run: {n_search} searches and "
              f"{len(todo) - n_search} trainings, {jobs} at a time"
              + (f", each on {nproc} processes" if nproc > 1 else "")
              + (f" ({' '.join(slots[0][0])} each)" if slots[0][0] else ""))
    stopped = run_pieces(todo, jobs, slots, extra, log, quiet, failures, nproc)
    if cfg.eval.benchmark and stopped is None:  # a stopped study stops now; --resume looks its cells up
        score_cells(lay, log, failures)
    write_failures(lay, failures)
    log.print(f"report: {write_report(lay, failures)}")
    hint = f"python -m nas compare --resume {study_dir}"
    if stopped is not None:
        raise Stopped(stopped, f"stopped the study; its runs checkpointed; continue with: {hint}")
    runs = pieces(lay)
    everything = [p.name for p in runs]
    left = [p.name for p in runs if p.status() != "done"]
    if cfg.eval.benchmark:
        everything += [f"bench/{c.id}" for c in lay.cells]
        left += [f"bench/{c.id}" for c in unscored(lay)]
    if left:
        first = next(iter(failures.items()), (left[0], "did not run: what it needs failed"))
        what = "runs and lookups" if cfg.eval.benchmark else "runs"
        raise RunsFailed(f"{len(left)} of {len(everything)} {what} did not finish ({first[0]}: {first[1]}); the "
                         f"report lists them; fix the cause and continue with: {hint}")


def report_study(study_dir: str | Path) -> Path:
    """--report, in two steps: look up the cells that have no benchmark record yet (eval.benchmark; runs nothing
    else), then build the report from whatever has finished; returns report.md's path."""
    from nas.run.runlog import RunLog
    from nas.study.jobs import study_lock
    from nas.study.report import write_report

    lay = load_study(study_dir)
    with study_lock(lay.dir):  # a study that is running writes failures.json and the report itself
        failures = read_failures(lay.dir)
        if lay.cfg.eval.benchmark:
            score_cells(lay, RunLog(lay.dir), failures)
            write_failures(lay, failures)
        return write_report(lay, failures)


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.study.run", "compare"))
