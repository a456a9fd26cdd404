"""What runs and studies are on disk, defined once: the names of their files, the kinds of run and the tool that
starts and resumes each, where a run stands and whether it has finished, and which kind it is (every other module asks
here). And files that several processes may write at once (torchrun ranks, a study's jobs, two runs sharing a cache):
each is written under a temporary name of its own beside the target, flushed to disk, then renamed over it, so that a
reader sees the old file or the new one and two writers never share a temporary file; and a lock file for work that
one process does while the others wait."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and this call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def replacing(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file to write ``path``'s new contents; on leaving the block it is flushed to disk and renamed
    over ``path``. If the block raises, ``path`` is left as it was and the temporary file is removed."""
    tmp = temp_path(path)
    try:
        with tmp.open(mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file of its own (see replacing)."""
    with replacing(path) as f:
        f.write(text)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent), waiting for any other holder (POSIX; elsewhere no
    lock). The file stays after the lock is released: removing a lock file races with a process opening it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- run files

CONFIG = "config.yaml"          # the resolved config: written first, so its presence means the run has started
METRICS = "metrics.jsonl"       # one record per finished epoch
GENOTYPES = "genotypes.jsonl"   # a search's genotype per epoch
ALPHA = "alpha.jsonl"           # a search's alpha per epoch
GENOTYPE = "genotype.json"      # a search's result (a training's copy of the cell it trains)
RESULTS = "results.json"        # a training's result
SUMMARY = "summary.json"        # the mean ± std of repeated trainings
CHECKPOINT = "checkpoint.pt"    # the last checkpoint, written atomically
META = "meta.json"              # the sessions of a run: command, versions, device, times
LOG = "log.txt"                 # every line the run printed
MODEL = "model.pt"              # a training's trained network: weights, genotype, settings (nas.load_model)
BUDGET = "budget.json"          # a budgeted search's cell cost against its target, and any repair
FINAL = "final.json"            # a search's final stage: every short-listed cell's training record
# Files that mark a directory as holding a run; run.overwrite=true removes exactly these (and tb/, cells/).
RUN_FILES = (CONFIG, METRICS, GENOTYPES, ALPHA, GENOTYPE, RESULTS, SUMMARY, CHECKPOINT, META, LOG, BUDGET, FINAL,
             MODEL)
RUN_DIRS = ("tb", "cells")

STUDY_FILE = "study.yaml"
SPACE = "space.json"            # bench/: the whole space's distribution on each data set (the table only)
BASELINES = "baselines.json"    # bench/: the records of the ResNet cell and of every convolution-only cell
FAILURES = "failures.json"      # run or lookup name -> why it failed
LOCK = ".lock"
REPORT_MD = "report.md"         # a study's report, and report.json its figures
REPORT_JSON = "report.json"
STUDY_FILES = (STUDY_FILE, REPORT_MD, REPORT_JSON, LOG, META, FAILURES, LOCK)
STUDY_DIRS = ("configs", "search", "random", "train", "bench", "plots")

# ---------------------------------------------------------------------------------------------- kinds and states

# the tool that starts and resumes each kind; "repeats" is evaluate --seeds: trainings of one genotype, one a seed
TOOL = {"search": "search", "train": "evaluate", "repeats": "evaluate", "study": "compare"}
RESULT = {"search": GENOTYPE, "train": RESULTS, "repeats": SUMMARY}  # the file that means a run of that kind is done


def resume_command(kind: str, run_dir: Path | str) -> str:
    """The command that continues the ``kind`` run in ``run_dir``, from any directory."""
    return f"python -m nas {TOOL[kind]} --resume {run_dir}"


def run_kind(run_dir: Path) -> str | None:
    """Which kind of run ``run_dir`` holds (a key of TOOL), as its meta.json records it; a run written before
    meta.json recorded its kind is told by its config.yaml's sections (None: no run)."""
    import json

    import yaml

    try:
        kind = json.loads((run_dir / META).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):  # no meta.json, a damaged one, or not an object
        kind = None
    if kind in TOOL:
        return str(kind)
    try:
        raw = yaml.safe_load((run_dir / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    return "search" if "search" in raw else "train" if "train" in raw else None


def run_state(run_dir: Path, kind: str) -> str:
    """Where the ``kind`` run (a key of RESULT) in ``run_dir`` stands: "done" (its result file is written),
    "interrupted" (a config and a checkpoint: --resume continues it), "started" (a config but no checkpoint yet:
    it starts again) or "not started". Repeated trainings with a config are interrupted: each of their trainings
    carries on from its own state."""
    if (run_dir / RESULT[kind]).exists():
        return "done"
    if not (run_dir / CONFIG).exists():
        return "not started"
    return "interrupted" if kind == "repeats" or (run_dir / CHECKPOINT).exists() else "started"


def is_finished(run_dir: Path, kind: str) -> bool:
    """Whether the ``kind`` run ("search" or "train") in ``run_dir`` has finished: its result file is written."""
    return run_state(run_dir, kind) == "done"


def remove_run_files(run_dir: Path) -> None:
    """Remove the files and folders that mark ``run_dir`` as holding a run (RUN_FILES, RUN_DIRS), and nothing else;
    an OSError is the caller's to report."""
    import shutil

    for f in RUN_FILES:
        (run_dir / f).unlink(missing_ok=True)
    for d in RUN_DIRS:
        if (run_dir / d).is_dir():
            shutil.rmtree(run_dir / d)
