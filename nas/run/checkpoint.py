"""Checkpoints and exact resume: atomic writes, safe loading (torch.load(weights_only=True), never pickle), every
RNG state, and a graceful stop on SIGINT / SIGTERM that finishes the current step and checkpoints first.

The data order needs no state of its own: nas.data.pipeline.Batches derives the order of every epoch and the
augmentation of every batch from (seed, epoch, batch), so (epoch, step) is enough to replay it.
"""

from __future__ import annotations

import os
import random
import signal
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.errors import UserError
from nas.run.files import CHECKPOINT as CHECKPOINT  # re-exported: a run's checkpoint file, named with the others
from nas.run.files import atomic_write_text, replacing

VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged or of the wrong kind."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary file, fsync it, then rename it over ``path``: a kill at any moment leaves
    either the previous checkpoint or the new one, never a torn file."""
    with replacing(path, "wb") as f:
        torch.save({"version": VERSION, **state}, f)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint for a ``kind`` ("search" or "train") run."""
    state = _read(path)
    if state.get("kind") != kind:
        raise CheckpointError(f"{path} is a {state.get('kind')!r} checkpoint, not a {kind!r} one")
    return state


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file fails inside the unpickler in many ways
        if "Unsupported global" in str(e) or "Unsupported operand" in str(e):
            reason = "it holds Python objects, and only tensors and plain data are ever loaded"
        else:
            reason = "the file is damaged, truncated or not a checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason}") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a checkpoint of this version of nas (version {VERSION})")
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from: Python, NumPy, torch (CPU) and CUDA."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_jsonl(path: Path, lines: int) -> None:
    """Keep the first ``lines`` lines: records written after the checkpoint being resumed are redone."""
    if not path.exists():
        return
    kept = path.read_text().splitlines(keepends=True)[:lines]
    atomic_write_text(path, "".join(kept))


class GracefulStop:
    """While active, SIGINT and SIGTERM only set ``received``; once per step and at each epoch's end the loop agrees on
    it with the other processes (Dist.agree sets ``signum``, the same on every process), then checkpoints and exits
    with 128 + signum (130 for SIGINT, 143 for SIGTERM). A second signal to this process stops it at once, and so does
    leaving the loop with a signal received that no agreement has seen: the signal is never lost."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that reached this process
        self.signum: int | None = None  # the signal every process stops for, as of the last agreement
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.received is not None:  # asked twice: give up waiting for the step
            raise interruption(signum)
        self.received = signum

    def checkpoint_due(self, step: int, steps: int, every: int) -> bool:
        """Whether to checkpoint after ``step``: every ``every`` steps (the epoch end checkpoints anyway), or
        because a signal asked to stop."""
        return self.signum is not None or (every > 0 and step % every == 0 and step < steps)

    def stop_if_asked(self, where: str, resume_hint: str) -> None:
        """Raise Stopped when a signal arrived; call it only after the checkpoint is written."""
        if self.signum is not None:
            raise Stopped(self.signum, f"stopped {where} with a checkpoint; resume with: {resume_hint}")

    def __enter__(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if kind is None and self.received is not None and self.signum is None:  # landed after the last agreement
            raise interruption(self.received)


class Stopped(Exception):
    """Raised after a graceful stop wrote its checkpoint; the CLI exits with ``exit_code``."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a loop's graceful stop, as Ctrl-C raises KeyboardInterrupt (exit 143)."""

    signum = signal.SIGTERM


def interruption(signum: int) -> KeyboardInterrupt:
    """What a signal raises where it lands: Terminated for SIGTERM, KeyboardInterrupt (Ctrl-C) otherwise."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    raise Terminated


class NumericalFault(Exception):
    """A loss that is NaN or infinite; the run stops without overwriting its last good checkpoint (exit 3)."""
