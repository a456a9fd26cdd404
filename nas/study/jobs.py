"""Running a study's pieces as processes: the launcher command (``python -m nas``, or torchrun), the hardware each
job slot gets, the pool that runs N at a time and forwards their lines, the signals that stop them, the study's
lock, and the kernel's parent-death signal that takes a study's runs down with it (Linux prctl).

A run that a study started imports this module for follow_parent alone: at import time it reads nothing of the
study (the study's types are imported for annotations only).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import UserError

if TYPE_CHECKING:
    from nas.config import StudyConfig
    from nas.study.plan import Piece

PARENT = "NAS_PARENT_PID"  # set in the environment of every run a study starts: the study's pid


# ---------------------------------------------------------------------------------------------- parent death

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


def follow_parent() -> None:
    """A run that a study started (NAS_PARENT_PID set) dies with the study: should the study be killed (even by
    SIGKILL), the kernel kills the run too (Linux), so no orphan keeps writing into the study directory. Its
    checkpoints are atomic, so --resume continues from the last one."""
    parent = os.environ.get(PARENT)
    if not parent or not sys.platform.startswith("linux"):
        return
    # Under torchrun (compare.py --nproc) the parent is torchrun, which the study started with the same setting:
    # the study's death kills torchrun, whose death kills this process.
    launched = "TORCHELASTIC_RUN_ID" in os.environ
    if not die_with_parent():
        return
    if not launched and os.getppid() != int(parent):  # the study died before the line above
        os._exit(137)


# ---------------------------------------------------------------------------------------------- commands and slots

def launcher(nproc: int) -> list[str]:
    """How a run starts: ``python -m nas``, or under torchrun on ``nproc`` processes of this machine."""
    if nproc == 1:
        return [sys.executable, "-m", "nas"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "nas"]


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
          f"python -m nas compare --report {study_dir}", file=sys.stderr)


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


# ---------------------------------------------------------------------------------------------- the pool

@dataclass
class Running:
    """A run in progress: its process, its job slot, and what it has printed."""

    piece: Piece
    proc: subprocess.Popen[bytes]
    slot: int
    start: float
    buffer: bytes = b""      # a partial line, waiting for the rest
    last: str = ""           # the last line it printed: on failure, its error
    forwarded: int = 0       # how many of the study's signals it has been sent

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
        stop.append(signum)  # forwarded by the loop, woken through the wakeup socket

    def forward() -> None:
        """Send every run each signal the study has had and it has not (each run checkpoints and exits; a second
        signal stops them at once). Called from the loop, never from the handler: a run started while a signal
        arrived is sent it once it is registered, and never twice."""
        for r in running.values():
            for signum in stop[r.forwarded:]:
                r.proc.send_signal(signum)
            r.forwarded = len(stop)

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    sel.register(wake_r, selectors.EVENT_READ)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT: str(os.getpid())}
    try:
        while True:
            while not stop and free:
                ready = [p for p in pending if p.ready()]
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
            forward()
            if not running:
                break
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj is wake_r:  # a signal: the loop forwards it
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                    forward()
                    continue
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
                    kept = r.piece.status() == "interrupted"  # torchrun exits 1 when stopped
                    log.print(f"stopped {r.piece.name} " + ("with a checkpoint" if kept else
                                                            "before its first checkpoint: it starts again"))
                else:
                    why = r.last if rc > 0 else exit_reason(rc)
                    failures[r.piece.name] = why
                    log.print(f"FAILED {r.piece.name} (exit {rc}): {why}")
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sel.close()
        wake_r.close()
        wake_w.close()
    return stop[0] if stop else None


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """An exclusive lock on the study while it runs, so that two compare.py never start the same run (POSIX;
    elsewhere no lock)."""
    from nas.run.files import LOCK

    try:
        import fcntl
    except ImportError:
        yield
        return
    with (study_dir / LOCK).open("a+") as f:
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
        try:
            yield
        finally:
            f.truncate(0)  # the file stays (removing a lock file races with a process opening it), its owner goes
