"""Files several processes write at once: every writer has a temporary file of its own, a failed write leaves the
old file and no temporary one, and a latency table is timed by one process while the others wait for it."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from nas.run.files import atomic_write_text, file_lock, replacing


def test_concurrent_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    target, errors = tmp_path / "shared.json", []

    def write(i: int) -> None:
        try:
            for k in range(150):
                atomic_write_text(target, f"{i} {k}\n" * 50)
        except OSError as e:  # a shared temporary name: the other writer renamed it away
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(target.read_text().splitlines())) == 1  # one writer's whole file, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), replacing(target) as f:
        f.write("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _time_table(cache: str, out: str) -> None:
    import os

    os.environ["NAS_CACHE_DIR"] = cache
    import torch

    from nas.searching.costs import latency_table
    from nas.space.spaces import get_space

    torch.set_num_threads(1)
    said: list[str] = []
    net = {"C": 4, "layers": 1, "classes": 10, "channels": 3, "size": 8}
    latency_table(get_space("nb201"), net, torch.device("cpu"), 1, None, said.append)
    Path(out).write_text("\n".join(said))


def test_a_latency_table_is_timed_by_one_process_while_the_others_wait(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_time_table, args=(str(tmp_path / "cache"), str(tmp_path / f"said-{i}.txt")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    said = [(tmp_path / f"said-{i}.txt").read_text() for i in range(3)]
    assert sum("timing every op" in s for s in said) == 1  # the others read the table it wrote
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1


def test_a_file_lock_is_exclusive(tmp_path: Path) -> None:
    lock, order = tmp_path / ".lock", []

    def hold(name: str) -> None:
        with file_lock(lock):
            order.append(f"{name} in")
            threading.Event().wait(0.05)
            order.append(f"{name} out")

    with file_lock(lock):
        t = threading.Thread(target=hold, args=("second",))
        t.start()
        threading.Event().wait(0.1)
        order.append("first out")
    t.join()
    assert order == ["first out", "second in", "second out"]
