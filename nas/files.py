"""Files that several processes may write at once (torchrun ranks, a study's jobs, two runs sharing a cache): each is
written under a temporary name of its own beside the target, flushed to disk, then renamed over it, so that a reader
sees the old file or the new one and two writers never share a temporary file; and a lock file for work that one
process does while the others wait (timing a latency table)."""

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
