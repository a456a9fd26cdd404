"""The run directory and what a run shows and records: creating the directory without clobbering an earlier run,
atomic JSON files, JSON-lines records, progress (tqdm bars on a terminal, plain lines otherwise), TensorBoard
events, and the run's metadata (command, git commit, versions, device)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from nas.errors import UserError
from nas.run.files import LOG, META, RESULT, RUN_FILES, remove_run_files, resume_command, run_kind, run_state, temp_path
from nas.run.files import atomic_write_text as atomic_write_text  # re-exported: runs write their JSON files by it


def prepare_run_dir(path: str, default_name: str, overwrite: bool, kind: str) -> Path:
    """Create the run directory of a new ``kind`` run. A run already there is refused, saying what continues it,
    unless ``overwrite``, or unless it is a ``kind`` run that stopped before its first checkpoint (run_state
    "started", or killed before its config.yaml: nothing to resume), which the same command starts again over what it
    left."""
    if not path:
        path = os.path.join("runs", f"{default_name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir={path!r} is a file, not a directory")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    held = run_kind(run_dir) if existing else None
    state = run_state(run_dir, held) if held in RESULT else None
    if existing and not overwrite and not (held == kind and state in ("started", "not started")):
        raise UserError(f"run.dir={path!r} already holds a run{held_run(run_dir, held, state, existing[0])}; choose "
                        "another run.dir, or set run.overwrite=true to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if existing:  # overwritten, or started again
            remove_run_files(run_dir)
        probe = temp_path(run_dir / "write-test")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write run.dir={path!r}: {e.strerror or e}") from None
    return run_dir


def held_run(run_dir: Path, kind: str | None, state: str | None, first: str) -> str:
    """What prepare_run_dir says of the run it found in ``run_dir``: its kind and state, and what continues it."""
    if kind is None or state is None:
        return f" ({first})"
    if state == "done":
        return f": a finished {kind} run ({RESULT[kind]})"
    if state == "interrupted":
        return f": an interrupted {kind} run; resume it with {resume_command(kind, run_dir)}"
    return f": a {kind} run stopped before its first checkpoint"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Records in the run directory, and the lines a run prints (also appended to log.txt). With ``writes=False``
    (the processes other than rank 0 of a distributed run) it prints and writes nothing."""

    def __init__(self, run_dir: Path, quiet: bool = False, writes: bool = True):
        self.dir, self.writes = run_dir, writes
        self.quiet = quiet or not writes
        self.start = time.time()
        self.tty = sys.stdout.isatty() and not self.quiet

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        if self.writes:
            atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        if self.writes:
            atomic_write_text(path, text)
        return path

    def append(self, name: str, record: dict[str, Any]) -> None:
        if self.writes:
            with (self.dir / name).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def print(self, message: str) -> None:
        if not self.writes:
            return
        minutes, seconds = divmod(int(time.time() - self.start), 60)  # whole seconds: never "2:60"
        line = f"[{minutes:3d}:{seconds:02d}] {message}"
        with (self.dir / LOG).open("a") as f:
            f.write(line + "\n")
        if self.quiet:
            return
        if self.tty:
            from tqdm import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)


class Progress:
    """A bar over the epochs and one over the steps of the current epoch on a terminal; on other outputs (a pipe,
    a scheduler's log) a plain line every ``every`` steps, or, when ``every`` is 0, one after the first
    FIRST_NOTE steps with the epoch's time to go and then one every NOTE_S seconds, so that a piped run shows
    it is alive long before its first epoch ends (the epoch lines are the caller's); nothing when quiet."""

    FIRST_NOTE = 5
    NOTE_S = 30.0

    def __init__(self, log: RunLog, epochs: int, steps: int, every: int, first_epoch: int = 0):
        self.log, self.steps, self.every = log, steps, every
        self.epoch_bar: Any = None
        self.step_bar: Any = None
        self.last = 0.0
        self.epoch_start, self.first_step, self.noted = 0.0, 0, False
        if log.tty:
            from tqdm import tqdm

            self.epoch_bar = tqdm(total=epochs, initial=first_epoch, desc="epochs", unit="epoch", position=0,
                                  dynamic_ncols=True)

    def start_epoch(self, epoch: int, first_step: int) -> None:
        self.epoch_start, self.first_step, self.noted = time.monotonic(), first_step, False
        self.last = self.epoch_start
        if self.epoch_bar is not None:
            from tqdm import tqdm

            self.step_bar = tqdm(total=self.steps, initial=first_step, desc=f"epoch {epoch + 1}", unit="step",
                                 position=1, leave=False, dynamic_ncols=True)

    def wants_postfix(self, step: int) -> bool:
        """Whether step() will show numbers now (fetching them from the device costs a synchronization)."""
        if self.step_bar is not None:
            return time.monotonic() - self.last > 0.5 or step == self.steps
        if self.log.quiet:
            return False
        if self.every:
            return step % self.every == 0
        if step >= self.steps:
            return False  # the epoch line follows at once
        if not self.noted:
            return step - self.first_step >= self.FIRST_NOTE
        return time.monotonic() - self.last >= self.NOTE_S

    def step(self, epoch: int, step: int, postfix: dict[str, str] | None) -> None:
        if self.step_bar is not None:
            self.step_bar.update(step - self.step_bar.n)
            if postfix:
                self.step_bar.set_postfix(postfix, refresh=False)
                self.last = time.monotonic()
        elif postfix:
            now = time.monotonic()
            done = step - self.first_step
            left = "" if self.every or not done else \
                f"  about {(now - self.epoch_start) / done * (self.steps - step):.0f}s to the epoch's end"
            self.log.print(f"  epoch {epoch + 1} step {step}/{self.steps}  " +
                           "  ".join(f"{k} {v}" for k, v in postfix.items()) + left)
            self.last, self.noted = now, True

    def end_epoch(self) -> None:
        if self.step_bar is not None:
            self.step_bar.close()
            self.step_bar = None
        if self.epoch_bar is not None:
            self.epoch_bar.update(1)

    def close(self) -> None:
        for bar in (self.step_bar, self.epoch_bar):
            if bar is not None:
                bar.close()
        self.step_bar = self.epoch_bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:  # bars close however the loop ends (done, stopped, fault)
        self.close()


class Board:
    """TensorBoard events under <run dir>/tb. ``first_step`` drops events a resumed run will write again."""

    def __init__(self, run_dir: Path, first_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=first_step or None)

    def scalars(self, record: dict[str, Any], step: int, group: str) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "steps"):
                name = key.replace("_", "/", 1) if key.startswith(("train_", "valid_", "test_")) else key
                self.writer.add_scalar(f"{group}/{name}", value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().cpu(), step)

    def close(self) -> None:
        self.writer.close()


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]  # the checkout: nas/run/runlog.py is two folders down
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def cpu_model() -> str:
    """The processor's name as the OS reports it ("" when it does not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def peak_memory_mib(device: torch.device) -> float:
    """The process's memory high-water mark so far, in MiB: on CUDA the tensors allocated on the device
    (torch.cuda.max_memory_allocated), on the CPU the resident set size (ru_maxrss: Python, torch and the data
    included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on a POSIX system
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def record_data(run_dir: Path, info: dict[str, Any]) -> None:
    """Note in meta.json what data the run reads (images per split, classes, image shape)."""
    path = run_dir / META
    meta = json.loads(path.read_text()) if path.exists() else {"sessions": []}
    meta["data"] = info
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


def record_session(run_dir: Path, device: torch.device, resumed: bool, kind: str) -> None:
    """Append this session (start or resume) to meta.json: command line, git commit, versions, device; and note the
    kind of run (a key of nas.run.files.TOOL), which nas.run.files.run_kind reads."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    try:
        vision = version("torchvision")  # not imported: that takes seconds (it loads torch._dynamo)
    except PackageNotFoundError:
        vision = None
    path = run_dir / META
    meta = json.loads(path.read_text()) if path.exists() else {"sessions": []}
    meta["kind"] = kind
    dev = {"type": device.type}
    if device.type == "cuda":
        dev["name"] = torch.cuda.get_device_name(device)
    meta["sessions"].append({
        "started": datetime.now().isoformat(timespec="seconds"), "resumed": resumed, "command": sys.argv,
        "cwd": os.getcwd(), "host": platform.node(), "git": _git_commit(), "device": dev,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": vision, "numpy": numpy.__version__},
        "threads": torch.get_num_threads(), "cpu": {"model": cpu_model(), "cores": os.cpu_count()}})
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
