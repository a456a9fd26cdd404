"""What every run starts with and goes through: its device, process group, threads, determinism and seeds, its
directory and checkpoint (Run), resuming from a checkpoint (Run.restore), the frame of its loop (Loop: epochs still to
run, progress, the graceful stop, the per-step agreement on faults and signals, checkpoints) and the per-epoch sums of
that loop (EpochMeter). Both loops, search and training, run in this frame; nas/run/runlog.py is what a run writes and
shows."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nas.errors import UserError
from nas.run.files import CONFIG, META, RESULT, is_finished, remove_run_files, resume_command
from nas.run.runlog import Board, Progress, RunLog, atomic_write_text, prepare_run_dir, record_data, record_session
from nas.text import count


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"run.device={name!r} but no CUDA device is available; valid here: auto, cpu")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"run.device={name!r} but there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """What every run starts with: its device, directory, log and, when resuming, the checkpoint's state.

    Under torchrun (nas/run/distributed.py) every process joins the process group here. Rank 0 alone creates the
    directory, reads the checkpoint and writes; the others receive the directory and the state from it, and a
    problem rank 0 finds (an existing run, a damaged checkpoint) is raised on every process alike."""

    def __init__(self, run_cfg: Any, seed: int, name: str, kind: str, config_yaml: str, resume: Path | None,
                 quiet: bool, part_of: Path | None = None):
        from nas.run.checkpoint import CHECKPOINT, load_checkpoint
        from nas.run.distributed import setup

        self.started = time.perf_counter()
        self.kind = kind
        self.part_of = part_of  # the parent of the repeated trainings this run is one of: what resuming continues
        self.dist, self.device = setup(resolve_device(run_cfg.device))
        if run_cfg.amp == "fp16" and self.device.type != "cuda":
            raise UserError(f"run.amp=fp16 needs a CUDA device, and this run is on {self.device.type}; "
                            "valid here: off, bf16")
        if run_cfg.threads:
            torch.set_num_threads(run_cfg.threads)
        if run_cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.state: dict[str, Any] | None = None
        main = self.dist.main
        self.new = resume is None
        self.created = self.new and not (run_cfg.dir and Path(run_cfg.dir).exists())  # the folder is this run's
        if resume is None:  # (directory, checkpoint state), as rank 0 found them
            found = self.dist.on_main(lambda: (str(prepare_run_dir(run_cfg.dir, name, run_cfg.overwrite, kind)), None))
            seed_everything(seed)
        else:
            found = self.dist.on_main(lambda: (str(resume), load_checkpoint(resume / CHECKPOINT, kind)))
        self.dir, self.state = Path(found[0]), found[1]
        self.saved_at = (self.state["epoch"], self.state["step"]) if self.state else None  # the last checkpoint's
        self.checkpoint_path = self.dir / CHECKPOINT
        _STARTED.append(self)  # from here on, what this new run writes is removed if it fails before a checkpoint
        self.log = RunLog(self.dir, quiet, writes=main)
        if resume is None:
            self.log.write_text(CONFIG, config_yaml)
        if main:
            record_session(self.dir, self.device, resumed=resume is not None, kind=kind)

    def finish(self) -> None:
        """Note in meta.json's record of this session its wall time and the CPU time of this process (every thread;
        the process's start, imports and data loading included): what the run cost. Rank 0 notes its own."""
        if not self.dist.main:
            return
        path = self.dir / META
        meta = json.loads(path.read_text())
        meta["sessions"][-1].update(wall_s=time.perf_counter() - self.started, cpu_s=time.process_time())
        atomic_write_text(path, json.dumps(meta, indent=2) + "\n")

    def record_data(self, info: dict[str, Any]) -> None:
        """Note in meta.json what data the run reads (rank 0 only: two writers would race on the file)."""
        if self.dist.main:
            record_data(self.dir, info)

    def save(self, state: dict[str, Any]) -> None:
        """Write the checkpoint (rank 0 only: every process holds the same state)."""
        from nas.run.checkpoint import save_checkpoint

        if self.dist.main:
            save_checkpoint(self.checkpoint_path, state)
        self.saved_at = (state["epoch"], state["step"])

    def discard(self) -> None:
        """Remove what this new run has written (rank 0; the others wrote nothing): its run files, and its folder
        when the run created it."""
        if not self.dist.main:
            return
        with contextlib.suppress(OSError):  # what cannot be removed stays; the stop goes on
            remove_run_files(self.dir)
        if self.created:
            with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                self.dir.rmdir()

    def resume_hint(self) -> str:
        """The command that continues this run (or the repeated trainings it is one of), from any directory."""
        return resume_command("repeats", self.part_of) if self.part_of else resume_command(self.kind, self.dir)

    def checkpoint_place(self) -> str:
        """Where the last checkpoint stands: "after epoch 2", or "at epoch 3 step 40" in the middle of one."""
        assert self.saved_at is not None, "a checkpoint comes first"
        epoch, step = self.saved_at
        return f"after epoch {epoch}" if step == 0 else f"at epoch {epoch + 1} step {step}"

    def restore(self, objects: dict[str, Any], records: tuple[str, ...]) -> tuple[int, int, dict[str, Any] | None]:
        """Load the checkpoint's state into ``objects`` (name in the checkpoint -> anything with load_state_dict;
        a missing or empty state is skipped, as a GradScaler's on a CPU), the random generators, and drop the
        lines of ``records`` written after it, which the run writes again. Returns (epoch, step, partial sums)
        to continue from: (0, 0, None) for a new run."""
        from nas.run.checkpoint import set_rng_state, truncate_jsonl

        if self.state is None:
            return 0, 0, None
        state = self.state
        for name, obj in objects.items():
            if obj is not None and state.get(name):
                obj.load_state_dict(state[name])
        set_rng_state(state["rng"])
        for f in records if self.dist.main else ():
            truncate_jsonl(self.dir / f, state["epoch"])
        self.log.print(f"resuming at epoch {state['epoch'] + 1}, step {state['step']}")
        return state["epoch"], state["step"], state["partial"]


def finished(resume: Path, kind: str, epochs: int, quiet: bool) -> bool:
    """Whether ``resume`` holds a finished ``kind`` run; if so it says so and the run is left as it is (resuming it
    writes nothing)."""
    from nas.run.distributed import is_main_process

    if not is_finished(resume, kind):
        return False
    if not quiet and is_main_process():
        print(f"{resume} has finished its {count(epochs, 'epoch')}; {RESULT[kind]} is its result", flush=True)
    return True


class Loop:
    """The frame both loops run in, search and training alike, so that each loop shows only its own steps:

        with Loop(run, cfg.run, epochs, steps, {"model": model, "opt": opt, ...}, records) as loop:
            for epoch in loop.epochs():
                meter, first = loop.start_epoch(epoch, sums=2, streams=1)
                for step, batch in enumerate(batches.epoch(epoch, first), start=first + 1):
                    loss = ...                                 # the loop's own step
                    loop.check(loss, step)                     # a fault or a signal on any process, on all
                    meter.add(...)
                    loop.stepped(step, postfix)                # progress; checkpoint when due; stop when asked
                loop.end_epoch()
                ...                                            # the loop's own records of the epoch
                loop.epoch_done()                              # checkpoint; stop when asked

    It restores the checkpoint's state into ``objects`` (Run.restore) and writes them back in every checkpoint,
    with the random generators and ``extra()``; it owns the progress bars or lines and the TensorBoard writer
    (``board``, rank 0 with run.tensorboard). Every process reaches each of its collectives at the same step: the
    agreement on a fault or a signal (Dist.agree) at every step, the meter's sums when a checkpoint is due."""

    def __init__(self, run: Run, run_cfg: Any, epochs: int, steps: int, objects: dict[str, Any],
                 records: tuple[str, ...], extra: Callable[[], dict[str, Any]] = dict):
        from nas.run.checkpoint import GracefulStop

        self.run, self.epochs_total, self.steps, self.objects, self.extra = run, epochs, steps, objects, extra
        self.every = run_cfg.checkpoint_every
        self.first_epoch, self.first_step, self.partial = run.restore(objects, records)
        self.board = Board(run.dir, first_step=self.first_epoch + 1) if run_cfg.tensorboard and run.dist.main \
            else None
        self.progress = Progress(run.log, epochs, steps, run_cfg.log_every, self.first_epoch)
        self.stop = GracefulStop()
        self.epoch = self.first_epoch  # the epoch running (start_epoch sets it)
        self.meter: EpochMeter | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Loop:
        self._stack.enter_context(self.stop)
        self._stack.enter_context(self.progress)
        if self.board is not None:
            self._stack.callback(self.board.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def epochs(self) -> range:
        """The epochs still to run (0-based)."""
        return range(self.first_epoch, self.epochs_total)

    def start_epoch(self, epoch: int, sums: int, streams: int) -> tuple[EpochMeter, int]:
        """The meter of ``epoch`` (``sums`` running sums, the images of ``streams`` batch streams), carried on from a
        checkpoint taken in its middle, and the number of its steps already done."""
        first = self.first_step if epoch == self.first_epoch else 0
        self.epoch = epoch
        self.meter = EpochMeter(sums, streams, self.run.device, self.run.dist, self.partial if first else None)
        self.progress.start_epoch(epoch, first)
        return self.meter, first

    def check(self, loss: torch.Tensor, step: int, losses: Callable[[], str] | None = None) -> None:
        """Once per step, on every process: agree on a signal (stop at this step, all alike) and on a loss that is not
        finite anywhere, which stops every process with NumericalFault, the last good checkpoint kept. ``losses``
        says what the loss was made of."""
        from nas.run.checkpoint import NumericalFault

        if self.run.dist.agree(self.stop, loss):
            kept = f"the last good checkpoint is kept: {self.run.checkpoint_path}" if self.run.saved_at else \
                "there is no checkpoint yet, and the run leaves nothing behind"
            what = losses() if losses is not None else str(loss.item())
            raise NumericalFault(f"the loss is not finite ({what}) at epoch {self.epoch + 1} step {step}; {kept}")

    def stepped(self, step: int, postfix: Callable[[EpochMeter], dict[str, str]]) -> None:
        """After a step: the progress (``postfix(meter)``, figures read from the device, only when shown), a checkpoint
        every run.checkpoint_every steps or when a signal asked to stop, and the stop."""
        assert self.meter is not None, "start_epoch comes first"
        self.progress.step(self.epoch, step, postfix(self.meter) if self.progress.wants_postfix(step) else None)
        if self.stop.checkpoint_due(step, self.steps, self.every):  # the sums leave the device only here
            self.save(self.epoch, step, self.meter.partial())
        self.stop.stop_if_asked(f"at epoch {self.epoch + 1} step {step}", self.run.resume_hint())

    def end_epoch(self) -> None:
        """The epoch's steps are done: its progress bar closes before its line is printed."""
        self.progress.end_epoch()

    def epoch_done(self) -> None:
        """After the epoch's records: the agreement on a signal that landed while they were written (after the last
        step's agreement), a checkpoint, then the stop if a signal asked for one."""
        self.run.dist.agree(self.stop, torch.zeros((), device=self.run.device))  # a finite loss: the signal alone
        self.save(self.epoch + 1, 0, None)
        self.stop.stop_if_asked(f"after epoch {self.epoch + 1}", self.run.resume_hint())

    def save(self, epoch: int, step: int, partial: dict[str, Any] | None) -> None:
        """The checkpoint after ``step`` steps of ``epoch`` (0-based; resuming runs step + 1 next): the state of every
        object, the random generators, the meter's sums in the middle of an epoch, and ``extra()``."""
        from nas.run.checkpoint import rng_state

        self.run.save({"kind": self.run.kind, "epoch": epoch, "step": step, "partial": partial,
                       **{name: obj.state_dict() if obj is not None else None for name, obj in self.objects.items()},
                       "rng": rng_state(), **self.extra()})


_STARTED: list[Run] = []  # the runs this process has started inside removed_if_unsaved, innermost last


@contextlib.contextmanager
def removed_if_unsaved() -> Iterator[None]:
    """A new run that fails or is stopped before its first checkpoint removes what it wrote: nothing is left that
    --resume could not continue or that would refuse the same command. A stop (Ctrl-C, SIGTERM) wherever it lands keeps
    the promise of a stop in the loop: before the first checkpoint, as a search of no epochs is while it scores cells,
    it says what it removed and that the same command starts the run again; after it, the checkpoint is kept, and a
    stop outside the loop's graceful stop (in derivation, while the result is written, a second Ctrl-C) says which
    checkpoint that is and how to resume from it. A failure (bad data found late, a non-finite loss, out of memory) is
    raised as it is."""
    from nas.run.checkpoint import Stopped

    mark = len(_STARTED)
    try:
        yield
    except (KeyboardInterrupt, Stopped) as e:
        started = _STARTED[mark:]
        signum = getattr(e, "signum", None) or signal.SIGINT
        fresh = discard_unsaved(started)
        if fresh is not None:
            again = f"run the same command, or {fresh.resume_hint()}," if fresh.part_of else "run the same command"
            raise Stopped(signum, f"stopped before the first checkpoint; removed what the run had written in "
                                  f"{fresh.dir}; {again} to start it again") from None
        if isinstance(e, Stopped) or not started:
            raise
        run = started[-1]
        raise Stopped(signum, f"stopped; the checkpoint {run.checkpoint_place()} is kept; resume with: "
                              f"{run.resume_hint()}") from None
    except Exception:
        discard_unsaved(_STARTED[mark:])
        raise
    finally:
        del _STARTED[mark:]


def discard_unsaved(started: list[Run]) -> Run | None:
    """Remove what the new runs among ``started`` that have no checkpoint wrote; returns the first of them."""
    fresh = [r for r in started if r.new and r.saved_at is None]
    for r in fresh:
        r.discard()
    return fresh[0] if fresh else None


class EpochMeter:
    """The sums of one epoch of a loop (losses and correct counts, kept on the device: no sync per step), the
    images of each of its streams, and its time; what a mid-epoch checkpoint holds of them (``partial``) and how
    a resumed epoch carries on from it. A checkpoint holds the sums and the image counts over every process, which
    rank 0 alone carries on from, so that a run resumed on another number of processes, or one whose processes had
    unequal shards, counts every image once."""

    def __init__(self, sums: int, streams: int, device: torch.device, dist: Any,
                 partial: dict[str, Any] | None = None):
        self.dist = dist
        carried = partial if dist.main else None
        self.sums = carried["sums"].to(device) if carried else torch.zeros(sums, device=device)
        images = carried["images"] if carried else [0] * streams
        self.images = [images] if isinstance(images, int) else list(images)
        self.spent = partial["time_s"] if partial else 0.0
        self.t0 = time.perf_counter()

    def add(self, values: list[torch.Tensor], *images: int) -> None:
        self.sums += torch.stack(values)
        self.images = [a + b for a, b in zip(self.images, images, strict=True)]

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.t0

    def local(self) -> list[float]:
        """This process's sums so far (a sync with the device: for progress lines only)."""
        return [float(v) for v in self.sums.tolist()]

    def _global(self) -> tuple[torch.Tensor, list[int]]:
        """The sums and the image counts over every process, in one all-reduce."""
        counts = torch.tensor(self.images, dtype=torch.float64, device=self.sums.device)
        both = self.dist.sum(torch.cat([self.sums.to(torch.float64), counts]))
        n = len(self.images)
        return both[:-n].to(self.sums.dtype), [round(float(v)) for v in both[-n:]]

    def partial(self) -> dict[str, Any]:
        """What a checkpoint in the middle of the epoch holds: the sums and images over every process."""
        sums, counts = self._global()
        images: int | list[int] = counts[0] if len(counts) == 1 else counts
        return {"sums": sums.cpu(), "images": images, "time_s": self.elapsed()}

    def totals(self) -> tuple[list[float], list[int]]:
        """The epoch's sums and images over every process."""
        sums, counts = self._global()
        return [float(v) for v in sums.tolist()], counts
