"""Data-parallel search on CPUs (gloo, 2 processes): every process draws the same sample and keeps bit-identical
weights and alpha; only the gradients that exist (the sampled ops' and the shared layers') are communicated; with
global BatchNorm a 2-process run equals a 1-process run of the same global batch; the CLI under torchrun writes one
run directory, reports bad input once, and a killed 2-process search resumes to the uninterrupted result."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nas.data.datasets import make_synthetic
from nas.data.pipeline import Batches, batch_seed, channel_stats
from nas.run.distributed import Dist, GlobalBatchNorm2d, setup, teardown
from nas.searching.bilevel import alpha_step, weight_step
from nas.searching.mixing import create_mixer
from nas.searching.supernet import MixedEdge, build_supernet
from nas.space.darts import DartsSearchCell

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_steps(d: Dist, steps: int, sync_bn: bool) -> dict[str, Any]:
    """A few bilevel steps of a small DARTS-space GDAS search, as nas/searching/bilevel.py runs them, in this
    process's share of the data; returns what each step sampled and communicated, and the final parameters."""
    torch.manual_seed(0)
    model = build_supernet("darts", C=4, layers=3, num_classes=4, mixer=create_mixer("gdas"))
    if sync_bn and d.active:
        from nas.run.distributed import use_global_batchnorm

        use_global_batchnorm(model)
    d.broadcast_parameters(model)
    model.generator = torch.Generator()
    data = make_synthetic(4 * GLOBAL_BATCH, 4, 8, seed=1)
    mean, std = channel_stats(data.images)
    train = Batches(data, torch.arange(0, 2 * GLOBAL_BATCH), batch_size=GLOBAL_BATCH, mean=mean, std=std,
                    augment=True, shard=(d.rank, d.world))
    valid = Batches(data, torch.arange(2 * GLOBAL_BATCH, 4 * GLOBAL_BATCH), batch_size=GLOBAL_BATCH, mean=mean,
                    std=std, seed=1, augment=True, shard=(d.rank, d.world))
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4)  # the recipes' arch_lr
    sampled: list[dict[str, list[int]]] = []
    record = model.mixings

    def mixings() -> Any:
        mix = record()
        sampled.append({t: list(m.index) for t, m in mix.items()})  # type: ignore[attr-defined]
        return mix

    model.mixings = mixings  # type: ignore[method-assign]
    out: dict[str, Any] = {"reduced": [], "with_grad": [], "unsampled_with_grad": 0, "total": 0}
    step = 0
    for epoch in range(2):
        for (xw, yw), (xa, ya) in zip(train.epoch(epoch), valid.epoch(epoch), strict=True):
            step += 1
            if step > steps:
                break
            model.generator.manual_seed(batch_seed(0, epoch, step, 1))
            before = d.bytes_reduced
            weight_step(model, xw, yw, w_opt, weights, 5.0, dist=d)
            out["reduced"].append((d.bytes_reduced - before) // 4)
            out["with_grad"].append(sum(p.numel() for p in weights if p.grad is not None))
            index = sampled[-1]
            for cell in model.cells:  # every op that was not sampled has no gradient at all
                assert isinstance(cell, DartsSearchCell)
                kind = "reduce" if cell.reduction else "normal"
                for e, edge in enumerate(cell.dag.edges):
                    assert isinstance(edge, MixedEdge)
                    for k, op in enumerate(edge.ops):
                        if k != index[kind][e]:
                            out["unsampled_with_grad"] += sum(p.grad is not None for p in op.parameters())
            alpha_step(model, xa, ya, a_opt, dist=d)
    out["total"] = sum(p.numel() for p in weights)
    out["sampled"] = sampled
    out["params"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    out["weights"] = torch.cat([p.detach().reshape(-1) for p in weights])
    out["alpha"] = torch.cat([p.detach().reshape(-1) for p in model.arch_parameters()])
    out["global_bn"] = sum(isinstance(m, GlobalBatchNorm2d) for m in model.modules())
    return out


def worker(rank: int, world: int, port: int, folder: str, steps: int, sync_bn: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d, _ = setup(torch.device("cpu"))
    try:
        out = run_steps(d, steps, sync_bn)
        gathered = [torch.empty_like(out["params"]) for _ in range(world)]
        dist.all_gather(gathered, out["params"])
        out["identical"] = all(torch.equal(g, gathered[0]) for g in gathered)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        teardown()


def spawn(tmp_path: Path, steps: int, sync_bn: bool) -> list[dict[str, Any]]:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), steps, sync_bn), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_every_rank_draws_the_same_sample_keeps_identical_parameters_and_reduces_only_sampled_gradients(
        tmp_path: Path) -> None:
    ranks = spawn(tmp_path, steps=3, sync_bn=False)
    one = run_steps(Dist(), steps=3, sync_bn=False)  # per-shard BatchNorm statistics: not the 1-process run
    assert one["sampled"] == ranks[0]["sampled"]
    assert not torch.allclose(ranks[0]["weights"], one["weights"], rtol=1e-4, atol=1e-5)
    assert ranks[0]["sampled"] == ranks[1]["sampled"] and len(ranks[0]["sampled"]) >= 6  # weight and alpha steps
    assert ranks[0]["identical"] and ranks[1]["identical"]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for r in ranks:
        assert r["unsampled_with_grad"] == 0
        # exactly the gradients that exist travel, and they are far fewer than the supernet's weights
        assert r["reduced"] == r["with_grad"] and max(r["reduced"]) < r["total"] / 3
    assert ranks[0]["global_bn"] == 0


def test_global_batchnorm_makes_two_ranks_equal_one_rank_with_the_same_global_batch(tmp_path: Path) -> None:
    one = run_steps(Dist(), steps=3, sync_bn=False)
    two = spawn(tmp_path, steps=3, sync_bn=True)
    assert two[0]["global_bn"] > 0 and torch.equal(two[0]["params"], two[1]["params"])
    assert one["sampled"] == two[0]["sampled"]
    assert torch.allclose(two[0]["weights"], one["weights"], rtol=1e-4, atol=1e-5)
    # Adam divides by the gradient's magnitude, so an alpha entry whose gradient is float noise may step +-lr either
    # way: alpha agrees to within a few steps of lr
    assert torch.allclose(two[0]["alpha"], one["alpha"], rtol=0, atol=2e-3)


# ---------------------------------------------------------------------------------------------- the CLI

TINY = ["--config", "configs/quickstart.yaml", "run.device=cpu", "data.synthetic.train=256", "data.image_size=8",
        "data.batch_size=32", "model.C=4", "model.layers=3", "run.tensorboard=false", "run.threads=1"]


def torchrun(args: list[str], script: str = "search.py", **kw: Any) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_torchrun_writes_one_run_directory_and_reports_bad_input_once(tmp_path: Path) -> None:
    rc, out, err = finish(torchrun([*TINY, "search.epochs=2", f"run.dir={tmp_path / 'run'}"]))
    assert rc == 0, err
    assert out.count("epoch 1/2") == 1 and "data-parallel over 2 processes: 16 images" in out
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["alpha.jsonl", "cells", "checkpoint.pt", "config.yaml", "genotype.json", "genotypes.jsonl",
                     "log.txt", "meta.json", "metrics.jsonl"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # one record per epoch, not one per process
    from nas.space.genotype import read_genotype

    assert read_genotype(tmp_path / "run" / "genotype.json").space == "darts"

    rc, out, err = finish(torchrun([*TINY, "data.batch_size=33", f"run.dir={tmp_path / 'bad'}"]))
    assert rc != 0 and err.count("error: data.batch_size=33 does not split evenly over 2 processes") == 1
    assert not (tmp_path / "bad").exists()  # nothing written

    # the found cell, retrained data-parallel: one results.json, the test accuracy over the whole test set
    rc, out, err = finish(torchrun(
        ["--config", "configs/eval/quick.yaml", "--genotype", str(tmp_path / "run"), "train.epochs=1",
         "data.synthetic.train=128", "data.synthetic.test=41", "data.image_size=8", "data.batch_size=16", "model.C=4",
         "model.layers=3", "run.sync_bn=true", "run.tensorboard=false", f"run.dir={tmp_path / 'train'}"],
        script="evaluate.py"))
    assert rc == 0, err
    assert out.count("epoch 1/1") == 1 and "global BatchNorm statistics" in out
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    assert round(results["final_test_acc"] * 41 / 100, 6).is_integer()  # correct answers out of all 41 images


def stop_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Signals on one rank of two around Dist.agree: what each rank decides."""
    from nas.run.checkpoint import GracefulStop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    d, _ = setup(torch.device("cpu"))
    loss, seen = torch.tensor(1.0), {}
    try:
        stop = GracefulStop()  # rank 1 is signalled first; rank 0's own signal lands after the agreement
        if rank == 1:
            stop._handle(signal.SIGTERM, None)
        d.agree(stop, loss)
        try:
            if rank == 0:
                stop._handle(signal.SIGTERM, None)  # its first signal: it waits for the checkpoint
            seen["second_signal"] = "waits"
        except KeyboardInterrupt:
            seen["second_signal"] = "gave up"
        seen["first_due"] = stop.checkpoint_due(1, 10, 0)
        late = GracefulStop()  # no signal at the agreement; then one reaches rank 0 before checkpoint_due
        d.agree(late, loss)
        if rank == 0:
            late._handle(signal.SIGINT, None)
        seen["late_due"] = late.checkpoint_due(1, 10, 0)
        d.agree(late, loss)  # the next step: every rank stops for it
        seen["next_due"] = late.checkpoint_due(2, 10, 0)
        seen["next_signum"] = late.signum
        (Path(folder) / f"stop-{rank}.json").write_text(json.dumps(seen))
    finally:
        teardown()


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path: Path) -> None:
    mp.spawn(stop_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"stop-{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] == {"second_signal": "waits", "first_due": True, "late_due": False,
                                    "next_due": True, "next_signum": int(signal.SIGINT)}


def meter_worker(rank: int, world: int, port: int, folder: str) -> None:
    """An epoch's meter on two ranks with unequal shards (5 and 3 images), checkpointed mid-epoch."""
    from nas.run.runtime import EpochMeter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    d, _ = setup(torch.device("cpu"))
    try:
        meter = EpochMeter(2, 1, torch.device("cpu"), d)
        n = 5 if rank == 0 else 3
        meter.add([torch.tensor(2.0 * n), torch.tensor(float(n - 1))], n)  # loss 2 per image, n - 1 correct
        partial, totals = meter.partial(), meter.totals()
        if rank == 0:
            torch.save({"partial": partial, "totals": totals}, Path(folder) / "meter.pt")
    finally:
        teardown()


def test_epoch_figures_count_every_image_once_across_shards_and_process_counts(tmp_path: Path) -> None:
    from nas.run.runtime import EpochMeter

    mp.spawn(meter_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "meter.pt", weights_only=False)
    assert saved["totals"] == ([16.0, 6.0], [8])  # unequal shards: 8 images, not 2 x 5
    assert saved["partial"]["images"] == 8
    resumed = EpochMeter(2, 1, torch.device("cpu"), Dist(), saved["partial"])  # resumed on one process
    resumed.add([torch.tensor(8.0), torch.tensor(4.0)], 4)
    (loss, correct), (n,) = resumed.totals()
    assert (loss, correct, n) == (24.0, 10.0, 12)  # the mean loss is 2 and 10 of 12 correct, as before the stop


def repeats_worker(rank: int, world: int, port: int, folder: str) -> None:
    """run_repeats on one rank of two, its trainings stubbed: which ranks create the parent folder."""
    import nas.train
    from nas.config import TrainConfig
    from nas.space.genotype import load_genotype

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    prepare = nas.train.prepare_run_dir

    def counted(*args: Any) -> Path:
        (Path(folder) / f"prepared-by-{rank}").touch()
        return prepare(*args)

    nas.train.prepare_run_dir = counted  # type: ignore[assignment]
    nas.train.run_train = lambda cfg, *a, **k: {"final_test_acc": 50.0 + cfg.seed, "params": 1, "flops": 1}
    cfg = TrainConfig()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(Path(folder) / "rep"), device="cpu"))
    try:
        nas.train.run_repeats(cfg, load_genotype("DARTS_V1"), [0, 1], quiet=True)
    finally:
        teardown()


def test_repeated_trainings_under_torchrun_create_their_folder_on_rank_0_alone(tmp_path: Path) -> None:
    mp.spawn(repeats_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared-by-0", "rep"]
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["final_test_acc"]["mean"] == 50.5


def test_a_killed_two_rank_search_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    args = [*TINY, "search.epochs=2", "run.checkpoint_every=1"]
    rc, _, err = finish(torchrun([*args, f"run.dir={tmp_path / 'whole'}"]))
    assert rc == 0, err
    p = torchrun([*args, f"run.dir={tmp_path / 'cut'}"], start_new_session=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)  # as a scheduler stops a job: every process gets it
    rc, _, err = finish(p)
    assert rc != 0 and not (tmp_path / "cut" / "genotype.json").exists()
    rc, _, err = finish(subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         "search.py", "--resume", str(tmp_path / "cut")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    assert rc == 0, err
    for name in ("alpha.jsonl", "genotypes.jsonl", "genotype.json"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name


@pytest.mark.parametrize("n,world", [(16, 2), (7, 2), (5, 3)])
def test_shards_cover_the_batch_once(n: int, world: int) -> None:
    from nas.data.pipeline import shard_slice

    parts = [shard_slice(n, r, world) for r in range(world)]
    sizes = [len(range(n)[s]) for s in parts]
    assert [i for s in parts for i in range(n)[s]] == list(range(n)) and max(sizes) - min(sizes) <= 1
