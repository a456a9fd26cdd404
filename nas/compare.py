"""A comparison study: every method searches with every seed on the same data, bilevel split and supernet; random
cells are drawn from the space under the derivation rule's constraints (the baseline of Li & Talwalkar 2019 and
Yang et al., ICLR 2020, "NAS evaluation is frustratingly hard"); every genotype is trained from scratch with one
shared recipe for every training seed.

Each piece is an ordinary search or training run directory under the study directory, started as its own process
(``python -m nas search|evaluate ...``), so --resume, TensorBoard, nas.plot and nas.genotype work on it, and a
scheduler can run the same command lines (--plan). The report is built from what the runs record (nas.report).

    STUDY/study.yaml                 the resolved study config
    STUDY/configs/search-<m>.yaml    the search recipe of method m;  STUDY/configs/train.yaml  the training recipe
    STUDY/search/<m>-s<seed>/        search runs
    STUDY/random/random-<i>/         random cells (genotype.json, cells/ drawings)
    STUDY/train/<cell>-e<seed>/      training runs, <cell> = <m>-s<seed> or random-<i>
    STUDY/bench/<cell>.json          with eval.benchmark (NB201): the cell's NAS-Bench-201 record, instead of trainings
    STUDY/report.md, report.json, plots/, log.txt, failures.json
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import selectors
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nas.config import StudyConfig, UserError, dump_yaml, load_config
from nas.report import Cell, SearchRun, StudyLayout, write_report

STUDY_FILE = "study.yaml"
STUDY_FILES = (STUDY_FILE, "report.md", "report.json", "log.txt", "meta.json", "failures.json", ".lock")
STUDY_DIRS = ("configs", "search", "random", "train", "bench", "plots")
RESUMABLE = ("run.device", "run.threads", "run.log_every", "run.checkpoint_every", "run.tensorboard")


class RunsFailed(Exception):
    """Some runs of a study failed; the others finished and the report lists what is missing (exit 1)."""


# ---------------------------------------------------------------------------------------------- the plan

def layout(study_dir: Path, cfg: StudyConfig) -> StudyLayout:
    """Every search, cell and training of the study, and where each lives."""
    searches = [SearchRun(m, s, study_dir / "search" / f"{m}-s{s}") for s in cfg.seeds for m in cfg.methods]
    cells = [Cell(f"{r.method}-s{r.seed}", r.method, r.seed, r.dir) for r in searches]
    cells += [Cell(f"random-{i}", "random", None, study_dir / "random" / f"random-{i}")
              for i in range(cfg.random.samples)]
    seeds = () if cfg.eval.benchmark else cfg.eval.seeds  # a benchmark study looks its cells up instead
    trainings = {c.id: [(e, study_dir / "train" / f"{c.id}-e{e}") for e in seeds] for c in cells}
    return StudyLayout(study_dir, cfg, searches, cells, trainings)


@dataclass(frozen=True)
class Piece:
    """One run of a study and the command line that starts it (after ``python -m nas``)."""

    name: str                 # its path under the study directory: search/gdas-s0, train/random-2-e0
    kind: str                 # search or train
    dir: Path
    args: tuple[str, ...]     # a new run: the recipe and its overrides
    needs: Path | None = None  # a training of a searched cell: the search run whose genotype.json it reads

    def status(self) -> str:
        """done, interrupted (a checkpoint to resume), started (no checkpoint yet: start again) or new."""
        if (self.dir / ("genotype.json" if self.kind == "search" else "results.json")).exists():
            return "done"
        if (self.dir / "checkpoint.pt").exists() and (self.dir / "config.yaml").exists():
            return "interrupted"
        return "started" if (self.dir / "config.yaml").exists() else "new"

    def command(self, extra: Sequence[str] = ()) -> list[str]:
        tool = "search" if self.kind == "search" else "evaluate"
        status = self.status()
        if status == "interrupted":
            return [tool, "--resume", str(self.dir), *extra]
        return [tool, *self.args, *(["run.overwrite=true"] if status == "started" else []), *extra]


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


# ---------------------------------------------------------------------------------------------- setup

def prepare_study(cfg: StudyConfig, name: str) -> Path:
    """Check the data, then create the study directory: the resolved config, one recipe file per method and one
    for training, and the random cells. Nothing is written before every check has passed."""
    from nas.data import load_dataset
    from nas.genotype import random_genotype
    from nas.plot import draw_cells
    from nas.runlog import atomic_write_text
    from nas.spaces import search_space

    if cfg.data.name != "synthetic":  # a missing or damaged data set fails here, not in the first run
        for split in ("train", "test"):
            load_dataset(cfg.data, split)
    if cfg.eval.benchmark:  # and a benchmark file that cannot be read
        open_benchmark(cfg.eval.benchmark)
    study_dir = Path(cfg.run.dir or os.path.join("runs", f"{name}-{datetime.now():%Y%m%d-%H%M%S}"))
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"run.dir={str(study_dir)!r} is a file, not a directory")
    if (study_dir / "config.yaml").exists():
        raise UserError(f"run.dir={str(study_dir)!r} holds a run (config.yaml), not a study; choose another run.dir")
    if (study_dir / STUDY_FILE).exists():
        if not cfg.run.overwrite:
            raise UserError(f"run.dir={str(study_dir)!r} already holds a study ({STUDY_FILE}); continue it with "
                            f"python compare.py --resume {study_dir}, rebuild its report with --report, choose "
                            "another run.dir, or set run.overwrite=true to replace it")
        import shutil

        for f in STUDY_FILES:
            (study_dir / f).unlink(missing_ok=True)
        for sub in STUDY_DIRS:
            shutil.rmtree(study_dir / sub, ignore_errors=True)
    try:
        (study_dir / "configs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write run.dir={str(study_dir)!r}: {e.strerror or e}") from None

    for method in dict.fromkeys([*cfg.methods, *cfg.per_method]):
        atomic_write_text(study_dir / "configs" / f"search-{method}.yaml", dump_yaml(cfg.search_config(method, 0)))
    if not cfg.eval.benchmark:
        atomic_write_text(study_dir / "configs" / "train.yaml", dump_yaml(cfg.train_config(cfg.eval.seeds[0])))
    space = search_space(cfg.model.space, cfg.model.ops, cfg.model.macro)
    rng = random.Random(cfg.random.seed)
    lay = layout(study_dir, cfg)
    for cell in lay.cells:
        if cell.method == "random":
            g = random_genotype(space, rng, cfg.search.derive)
            cell.source.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cell.source / "genotype.json", g.to_json())
            draw_cells(g, cell.source / "cells")
    atomic_write_text(study_dir / STUDY_FILE, dump_yaml(cfg))  # last: its presence means the study is complete
    return study_dir


def load_study(study_dir: str | Path, overrides: Sequence[str] = ()) -> StudyLayout:
    """The layout of an existing study, from its study.yaml."""
    path = Path(study_dir)
    if not path.is_dir():
        raise UserError(f"study directory {str(study_dir)!r} is not a directory")
    if not (path / STUDY_FILE).is_file():
        hint = " (it is a run directory: use search.py or evaluate.py --resume)" if (path / "config.yaml").exists() \
            else ""
        raise UserError(f"{str(study_dir)!r} is not a study directory: it has no {STUDY_FILE}{hint}")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE:
            raise UserError(f"{key!r} cannot change in a study that has started (every run must see the same "
                            f"settings); valid when continuing: {', '.join(RESUMABLE)}")
    cfg = load_config(StudyConfig, path / STUDY_FILE, list(overrides))
    return layout(path, cfg)


# ---------------------------------------------------------------------------------------------- benchmark lookups

@functools.lru_cache(maxsize=1)
def open_benchmark(path: str) -> Any:
    """The NAS-Bench-201 API over ``path``, read once per process (a whole NATS-tss file is large)."""
    from nas.bench201 import load_benchmark

    return load_benchmark(path)


def unscored(lay: StudyLayout) -> list[Cell]:
    """With eval.benchmark: the cells whose genotype exists but whose benchmark record is missing or stale."""
    from nas.genotype import read_genotype, to_nb201_string

    out = []
    for cell in lay.cells:
        if not (cell.source / "genotype.json").exists():
            continue
        path = lay.lookup_file(cell)
        record = json.loads(path.read_text()) if path.exists() else None
        if record is None or record["arch"] != to_nb201_string(read_genotype(cell.source / "genotype.json")):
            out.append(cell)
    return out


def score_cells(lay: StudyLayout, log: Any, failures: dict[str, str]) -> None:
    """Look every found or drawn cell that has no record yet up in the benchmark (eval.benchmark) and write its
    record to bench/<cell>.json; a cell that cannot be looked up is recorded in ``failures`` as bench/<cell>."""
    from nas.bench201 import DATASETS, BenchmarkError, describe_epoch, epoch_metrics, lookup
    from nas.genotype import read_genotype
    from nas.runlog import atomic_write_text

    todo = unscored(lay)
    if not todo:
        return
    try:
        api = open_benchmark(lay.cfg.eval.benchmark)
    except BenchmarkError as e:
        for cell in todo:
            failures[f"bench/{cell.id}"] = str(e)
        log.print(f"FAILED the NAS-Bench-201 lookup of {len(todo)} cells: {e}")
        return
    (lay.dir / "bench").mkdir(exist_ok=True)
    if hasattr(api, "distribution"):  # the table holds the whole space: its exact distribution, for the report
        atomic_write_text(lay.dir / "bench" / "space.json",
                          json.dumps({d: api.distribution(d) for d in DATASETS}, indent=2) + "\n")
    for cell in todo:
        try:
            record = lookup(api, read_genotype(cell.source / "genotype.json"))
        except BenchmarkError as e:
            failures[f"bench/{cell.id}"] = str(e)
            log.print(f"FAILED bench/{cell.id}: {e}")
            continue
        atomic_write_text(lay.lookup_file(cell), json.dumps(record, indent=2) + "\n")
        failures.pop(f"bench/{cell.id}", None)
        log.print(f"NAS-Bench-201: {cell.id}: {describe_epoch(epoch_metrics(record))}")


# ---------------------------------------------------------------------------------------------- running

def job_settings(cfg: StudyConfig, jobs: int, nproc: int = 1) -> list[tuple[list[str], dict[str, str]]]:
    """Per job slot, the run.* overrides and environment that share the hardware: one GPU per slot when there are
    GPUs (``nproc`` GPUs per slot for runs under torchrun), else the CPU cores split between the slots and their
    processes (unless run.threads is set)."""
    import torch

    device = cfg.run.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if nproc == 1:
            return [([f"run.device=cuda:{i % n}"], {}) for i in range(jobs)]
        gpus = [",".join(str((i * nproc + k) % n) for k in range(nproc)) for i in range(jobs)]
        return [(["run.device=cuda"], {"CUDA_VISIBLE_DEVICES": g}) for g in gpus]
    if device.startswith("cuda") or cfg.run.threads or jobs * nproc == 1:
        return [([], {}) for _ in range(jobs)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // (jobs * nproc))
    return [([f"run.threads={threads}"], {"OMP_NUM_THREADS": str(threads)}) for _ in range(jobs)]


def exit_reason(rc: int) -> str:
    """Why a piece that printed no error line ended without its result file: exit 0, or a signal (rc < 0)."""
    if rc == 0:
        return "exited 0 without writing its result file"
    try:
        return f"killed by signal {signal.Signals(-rc).name}"
    except ValueError:
        return f"killed by signal {-rc}"


def launcher(nproc: int) -> list[str]:
    """How a run starts: ``python -m nas``, or under torchrun on ``nproc`` processes of this machine."""
    if nproc == 1:
        return [sys.executable, "-m", "nas"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "nas"]


def die_with_parent() -> bool:
    """Have the kernel kill this process (SIGKILL) when its parent dies, even by SIGKILL (Linux; PR_SET_PDEATHSIG).
    Called by a run a study started, and in a torchrun child before it starts. Returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
    return True


@dataclass
class Running:
    """A run in progress: its process, its job slot, and what it has printed."""

    piece: Piece
    proc: subprocess.Popen[bytes]
    slot: int
    start: float
    buffer: bytes = b""      # a partial line, waiting for the rest
    last: str = ""           # the last line it printed: on failure, its error

    def read(self, fd: int, quiet: bool) -> bool:
        """Forward what the run has printed since, line by line; False once it has closed its output."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        lines = (self.buffer + chunk).split(b"\n")
        self.buffer = lines.pop() if chunk else b""
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.last = line
                if not quiet:
                    print(f"  {self.piece.name} | {line}", flush=True)
        return bool(chunk)


def run_pieces(todo: list[Piece], jobs: int, slots: list[tuple[list[str], dict[str, str]]], extra: Sequence[str],
               log: Any, quiet: bool, failures: dict[str, str], nproc: int = 1) -> int | None:
    """Run ``todo``, ``jobs`` at a time, each training after the search it needs; forward their lines. Returns the
    signal that stopped the study (its runs checkpointed), or None. Failed runs are recorded in ``failures``."""
    pending = list(todo)
    running: dict[int, Running] = {}
    free = list(range(jobs))
    stop: list[int] = []
    sel = selectors.DefaultSelector()
    total, finished = len(todo), 0

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.append(signum)
        for r in running.values():  # each run checkpoints and exits; a second signal stops them at once
            r.proc.send_signal(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NAS_PARENT_PID": str(os.getpid())}
    try:
        while True:
            while not stop and free:
                ready = [p for p in pending if p.needs is None or (p.needs / "genotype.json").exists()]
                if not ready:
                    break
                piece, slot = ready[0], free.pop(0)
                pending.remove(piece)
                overrides, slot_env = slots[slot]
                cmd = [*launcher(nproc), *piece.command([*overrides, *extra])]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**env, **slot_env},
                                        start_new_session=True,  # signals reach it only through the study
                                        preexec_fn=die_with_parent if nproc > 1 else None)
                assert proc.stdout is not None
                os.set_blocking(proc.stdout.fileno(), False)
                running[proc.stdout.fileno()] = Running(piece, proc, slot, time.perf_counter())
                sel.register(proc.stdout, selectors.EVENT_READ)
                log.print(f"start {piece.name} ({finished + len(running)}/{total})")
            if not running:
                break
            for key, _ in sel.select(timeout=1.0):
                r = running[key.fd]
                if r.read(key.fd, quiet):
                    continue
                sel.unregister(key.fileobj)
                del running[key.fd]
                rc = r.proc.wait()
                free.append(r.slot)
                free.sort()
                took = time.perf_counter() - r.start
                if rc == 0 and r.piece.status() == "done":
                    finished += 1
                    failures.pop(r.piece.name, None)
                    log.print(f"done {r.piece.name} in {took:.0f}s ({finished}/{total})")
                elif stop and (rc in (130, 143, -signal.SIGINT, -signal.SIGTERM) or nproc > 1 and rc == 1):
                    log.print(f"stopped {r.piece.name} with a checkpoint")  # torchrun exits 1 when stopped
                else:
                    why = r.last if rc > 0 else exit_reason(rc)
                    failures[r.piece.name] = why
                    log.print(f"FAILED {r.piece.name} (exit {rc}): {why}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sel.close()
    return stop[0] if stop else None


def run_study(cfg: StudyConfig | None = None, name: str = "compare", *, resume: Path | None = None,
              overrides: Sequence[str] = (), jobs: int = 1, plan: bool = False, quiet: bool = False,
              nproc: int = 1) -> Path:
    """Run a study from ``cfg`` (or continue the one in ``resume``: finished runs are skipped and interrupted ones
    resumed from their checkpoints); with ``plan``, print the command lines of the runs still to do instead."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is not valid; valid: 1 or more")
    if nproc < 1:
        raise UserError(f"--nproc {nproc} is not valid; valid: 1 or more")
    if resume is None:
        assert cfg is not None
        study_dir = prepare_study(cfg, name)
        lay, extra = layout(study_dir, cfg), []
    else:
        lay, extra = load_study(resume, overrides), list(overrides)
        study_dir = lay.dir
    todo = [p for p in pieces(lay) if p.status() != "done"]
    if plan:
        print_plan(todo, study_dir, nproc, benchmark=bool(lay.cfg.eval.benchmark))
        return study_dir

    with study_lock(study_dir):
        execute(lay, todo, jobs, extra, quiet, resumed=resume is not None, nproc=nproc)
    return study_dir


def execute(lay: StudyLayout, todo: list[Piece], jobs: int, extra: Sequence[str], quiet: bool, resumed: bool,
            nproc: int = 1) -> None:
    """Run what is left of the study, write its report, and say how it ended (Stopped, RunsFailed or done)."""
    from nas.checkpoint import Stopped
    from nas.runlog import RunLog, atomic_write_text, record_session, resolve_device

    study_dir = lay.dir
    log = RunLog(study_dir, quiet)
    record_session(study_dir, resolve_device(lay.cfg.run.device), resumed=resumed)
    failures_path = study_dir / "failures.json"
    failures: dict[str, str] = json.loads(failures_path.read_text()) if failures_path.exists() else {}
    slots = job_settings(lay.cfg, jobs, nproc)
    n_search = sum(1 for p in todo if p.kind == "search")
    bench = lay.cfg.eval.benchmark
    scoring = f"{len(lay.cells)} cells looked up in NAS-Bench-201 ({bench})" if bench \
        else f"{len(lay.cells)} cells x {len(lay.cfg.eval.seeds)} training seeds"
    log.print(f"study {study_dir}: {len(lay.cfg.methods)} methods x {len(lay.cfg.seeds)} seeds, "
              f"{lay.cfg.random.samples} random cells, {scoring}; to run: {n_search} searches and "
              f"{len(todo) - n_search} trainings, {jobs} at a time"
              + (f", each on {nproc} processes" if nproc > 1 else "")
              + (f" ({' '.join(slots[0][0])} each)" if slots[0][0] else ""))
    stopped = run_pieces(todo, jobs, slots, extra, log, quiet, failures, nproc)
    if lay.cfg.eval.benchmark and stopped is None:  # a stopped study stops now; --resume looks its cells up
        score_cells(lay, log, failures)
    atomic_write_text(failures_path, json.dumps(failures, indent=2) + "\n")
    log.print(f"report: {write_report(lay, failures)}")
    hint = f"python compare.py --resume {study_dir}"
    if stopped is not None:
        raise Stopped(stopped, f"stopped the study; its runs checkpointed; continue with: {hint}")
    runs = pieces(lay)
    everything = [p.name for p in runs]
    left = [p.name for p in runs if p.status() != "done"]
    if lay.cfg.eval.benchmark:
        everything += [f"bench/{c.id}" for c in lay.cells]
        left += [f"bench/{c.id}" for c in unscored(lay)]
    if left:
        first = next(iter(failures.items()), (left[0], "did not run: what it needs failed"))
        what = "runs and lookups" if lay.cfg.eval.benchmark else "runs"
        raise RunsFailed(f"{len(left)} of {len(everything)} {what} did not finish ({first[0]}: {first[1]}); the "
                         f"report lists them; fix the cause and continue with: {hint}")


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """An exclusive lock on the study while it runs, so that two compare.py never start the same run (POSIX;
    elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with (study_dir / ".lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise UserError(f"study {str(study_dir)!r} is being run by {owner}; wait for it to finish or stop it "
                            "(Ctrl-C), then continue with --resume") from None
        f.truncate(0)
        f.write(f"compare.py (pid {os.getpid()})")
        f.flush()
        yield


def print_plan(todo: list[Piece], study_dir: Path, nproc: int = 1, benchmark: bool = False) -> None:
    """One command line per run still to do, in an order that works when run top to bottom; the trainings of
    searched cells need their search's genotype.json (a note on stderr says which lines are free to start)."""
    free = sum(1 for p in todo if p.needs is None)
    start = ["python", "-m", "nas"] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m",
                                                        "nas"]
    for p in todo:
        print(shlex.join([*start, *p.command()]))
    if benchmark:
        print(f"# {len(todo)} searches, all free to start at once; nothing is retrained. When they are done: python "
              f"compare.py --report {study_dir} looks every cell up in NAS-Bench-201 and writes the report",
              file=sys.stderr)
        return
    print(f"# {len(todo)} runs: the first {free} can start at once; each of the other {len(todo) - free} trains a "
          "searched cell and needs its search's genotype.json. When they are done: "
          f"python compare.py --report {study_dir}", file=sys.stderr)


def report_study(study_dir: str | Path) -> Path:
    """Build the report of a study from whatever has finished; returns report.md's path."""
    lay = load_study(study_dir)
    path = lay.dir / "failures.json"
    failures = json.loads(path.read_text()) if path.exists() else {}
    if lay.cfg.eval.benchmark:
        from nas.runlog import RunLog, atomic_write_text

        score_cells(lay, RunLog(lay.dir), failures)
        atomic_write_text(path, json.dumps(failures, indent=2) + "\n")
    return write_report(lay, failures)
