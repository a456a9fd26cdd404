"""The run directory: creating it without clobbering an earlier run, and the files a run writes there
(config.yaml, metrics.jsonl, ...), each written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nas.config import UserError

# Files that mark a directory as holding a run; run.overwrite=true removes exactly these.
RUN_FILES = ("config.yaml", "metrics.jsonl", "genotypes.jsonl", "alpha.jsonl", "genotype.json", "results.json",
             "summary.json")


def prepare_run_dir(path: str, default_name: str, overwrite: bool) -> Path:
    """Create the run directory. An existing run there is an error unless ``overwrite``."""
    if not path:
        path = os.path.join("runs", f"{default_name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir={path!r} is a file, not a directory")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if existing and not overwrite:
        raise UserError(f"run.dir={path!r} already holds a run ({existing[0]}); choose another run.dir, or set "
                        "run.overwrite=true to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for f in existing:
            (run_dir / f).unlink()
    except OSError as e:
        raise UserError(f"cannot create run.dir={path!r}: {e.strerror or e}") from None
    return run_dir


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunLog:
    """Appends records to the run directory's JSON-lines files and prints progress lines."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.dir, self.quiet = run_dir, quiet
        self.start = time.time()

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        atomic_write_text(path, text)
        return path

    def append(self, name: str, record: dict[str, Any]) -> None:
        with (self.dir / name).open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def print(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.time() - self.start
            print(f"[{elapsed // 60:3.0f}:{elapsed % 60:02.0f}] {message}", file=sys.stdout, flush=True)
