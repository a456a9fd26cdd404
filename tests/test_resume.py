"""Stop, kill and resume: a search or a training killed with SIGKILL mid-epoch and resumed ends identical to the
uninterrupted run; SIGINT / SIGTERM checkpoint and exit 130 / 143; checkpoints are written atomically; a
non-finite loss stops the run and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.cli import search_main
from nas.config import SearchConfig, load_config
from nas.run.checkpoint import CheckpointError, NumericalFault, load_checkpoint, save_checkpoint
from nas.searching import bilevel as search_module
from nas.searching.bilevel import run_search

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["search.epochs=3", "data.synthetic.train=256", "data.image_size=8", "data.batch_size=16", "model.C=4",
          "model.layers=3", "run.deterministic=true", "run.log_every=1", "run.tensorboard=false"]  # 8 steps/epoch
TRAIN = ["--config", "configs/eval/quick.yaml", "--genotype", "DARTS_V2", "train.epochs=3",
         "data.synthetic.train=256", "data.synthetic.test=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
         "model.layers=3", "run.deterministic=true", "run.log_every=1", "run.tensorboard=false"]  # 16 steps/epoch


def start(script: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"the run ended before printing {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout}s"
        time.sleep(0.02)


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def strip_times(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "images_per_s", "peak_mib")}
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("search") / "full"
    proc = run("search.py", *SEARCH, f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.mark.parametrize("kill_after,checkpoint_every", [("epoch 2 step 6/8", 3)])
def test_search_killed_mid_epoch_resumes_identically(uninterrupted: Path, tmp_path: Path, kill_after: str,
                                                     checkpoint_every: int) -> None:
    run_dir, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = start("search.py", [*SEARCH, f"run.checkpoint_every={checkpoint_every}", f"run.dir={run_dir}"], log)
    wait_for(log, kill_after, proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: wherever it is, even inside a checkpoint write
    assert proc.wait() == -signal.SIGKILL
    if not (run_dir / "checkpoint.pt").exists():  # killed before its first checkpoint: nothing to resume
        assert kill_after.startswith("epoch 1")
        return
    resumed = run("search.py", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout
    for name in ("alpha.jsonl", "genotypes.jsonl", "genotype.json"):
        assert (run_dir / name).read_text() == (uninterrupted / name).read_text(), name
    assert strip_times(run_dir / "metrics.jsonl") == strip_times(uninterrupted / "metrics.jsonl")
    assert all("param_free_mass" in m for m in strip_times(run_dir / "metrics.jsonl"))  # kept over the resume
    a = load_checkpoint(run_dir / "checkpoint.pt", "search")["model"]
    b = load_checkpoint(uninterrupted / "checkpoint.pt", "search")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # every weight and alpha, bit for bit


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143)])  # SIGINT takes the same path (130): test_compare
def test_signals_checkpoint_and_exit_with_a_resume_hint(uninterrupted: Path, tmp_path: Path, sig: int,
                                                        code: int) -> None:
    run_dir, log = tmp_path / "stopped", tmp_path / "log.txt"
    proc = start("search.py", [*SEARCH, f"run.dir={run_dir}"], log)
    wait_for(log, "epoch 2 step 3/8", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    text = log.read_text()
    assert f"resume with: python -m nas search --resume {run_dir}" in text and "Traceback" not in text
    state = load_checkpoint(run_dir / "checkpoint.pt", "search")
    assert state["epoch"] == 1 and state["step"] >= 3  # mid-epoch 2: it finished the step it was in
    assert run("search.py", "--resume", str(run_dir)).returncode == 0
    assert (run_dir / "alpha.jsonl").read_text() == (uninterrupted / "alpha.jsonl").read_text()


def test_training_killed_mid_epoch_resumes_identically(tmp_path: Path) -> None:
    full = tmp_path / "full"
    assert run("evaluate.py", *TRAIN, f"run.dir={full}").returncode == 0
    run_dir, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = start("evaluate.py", [*TRAIN, "run.checkpoint_every=4", f"run.dir={run_dir}"], log)
    wait_for(log, "epoch 2 step 10/16", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run("evaluate.py", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert strip_times(run_dir / "metrics.jsonl") == strip_times(full / "metrics.jsonl")
    a, b = (json.loads((d / "results.json").read_text()) for d in (run_dir, full))
    assert a["final_test_acc"] == b["final_test_acc"] and a["final_test_loss"] == b["final_test_loss"]
    wa = load_checkpoint(run_dir / "checkpoint.pt", "train")["model"]
    wb = load_checkpoint(full / "checkpoint.pt", "train")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resuming_a_finished_run_changes_nothing(uninterrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (uninterrupted / "genotype.json").read_text()
    assert search_main(["--resume", str(uninterrupted)]) == 0
    assert "has finished its 3 epochs" in capsys.readouterr().out
    assert (uninterrupted / "genotype.json").read_text() == before


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"kind": "search", "epoch": 1, "step": 0, "w": torch.arange(4.0)})

    def killed(*args: object) -> None:  # the process dies after writing the temporary file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"kind": "search", "epoch": 2, "step": 0, "w": torch.zeros(4)})
    state = load_checkpoint(path, "search")
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(4.0))


def test_checkpoints_never_unpickle_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"version": 1, "kind": "search", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(path, "search")
    assert not marker.exists()


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(SearchConfig, None, [*SEARCH, "run.checkpoint_every=1", f"run.dir={tmp_path / 'run'}"])
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1  # two losses per step: the 6th is the alpha loss of step 3
        loss = real(logits, y)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(search_module.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(NumericalFault, match=r"not finite .* at epoch 1 step 3; the last good checkpoint is kept"):
        run_search(cfg, quiet=True)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "search")
    assert (state["epoch"], state["step"]) == (0, 2)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_numerical_fault_exits_3_from_the_cli(tmp_path: Path) -> None:
    proc = run("search.py", *SEARCH, "search.epochs=1", "search.lr=1e25", "search.lr_min=0", "search.grad_clip=0",
               f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: the loss is not finite") and proc.stderr.count("\n") == 1


NASWOT_GDAS = ["search.prior=2", "search.prior_samples=6", "search.weight_sampling=uniform",
               "search.beta_decay=0.1", "search.derive=score", "search.pool=alpha", "search.samples=4",
               "search.score_batch=16"]


@pytest.mark.parametrize("method", [["search.mixer=snas"], ["search.mixer=darts", "search.unrolled=true"],
                                    ["search.mixer=random", "search.derive=sample", "search.samples=3"],
                                    ["search.mixer=drnas", "search.drnas_kl=0.1"], NASWOT_GDAS],
                         ids=["snas", "darts-second-order", "random", "drnas", "gdas-naswot"])
def test_every_method_resumes_identically(tmp_path: Path, method: list[str]) -> None:
    args = [*SEARCH, "search.epochs=2", "model.space=nb201", "model.layers=1", *method]
    full, killed, log = tmp_path / "full", tmp_path / "killed", tmp_path / "log.txt"
    done = run("search.py", *args, f"run.dir={full}")
    assert done.returncode == 0, done.stderr
    proc = start("search.py", [*args, "run.checkpoint_every=2", f"run.dir={killed}"], log)
    wait_for(log, "epoch 2 step 3/8", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed = run("search.py", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    for name in ("alpha.jsonl", "genotypes.jsonl", "genotype.json"):  # random search writes no alpha records
        assert (killed / name).exists() == (full / name).exists(), name
        if (full / name).exists():
            assert (killed / name).read_text() == (full / name).read_text(), name
    assert (full / "genotype.json").exists()
    a = load_checkpoint(killed / "checkpoint.pt", "search")["model"]
    b = load_checkpoint(full / "checkpoint.pt", "search")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


ZERO = ["--config", "configs/search/zc-train-nb201-small.yaml", "data.name=synthetic", "data.synthetic.train=256",
        "data.image_size=8", "model.C=4", "search.score_batch=16", "search.final.cells=2", "search.final.epochs=1",
        "search.final.average=1", "run.tensorboard=false", "run.threads=1"]  # no epochs: scores, then 2 short trainings


def test_a_stop_before_the_first_checkpoint_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir, log = tmp_path / "scoring", tmp_path / "out.txt"
    # scoring for minutes; a pool larger than the space's 15,625 cells would take minutes to draw first
    proc = start("search.py", [*ZERO, "search.samples=3000", f"run.dir={run_dir}"], log)
    wait_for(log, "scoring 3000 random cells", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    text = log.read_text()
    assert (f"stopped before the first checkpoint; removed what the run had written in {run_dir}; run the same "
            "command to start it again") in text and "Traceback" not in text
    assert not run_dir.exists()  # no config.yaml, log.txt or meta.json that --resume could not continue


def test_resuming_a_finished_search_of_no_epochs_says_so_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "zero"
    assert search_main([*ZERO, "search.samples=4", f"run.dir={run_dir}"]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    assert search_main(["--resume", str(run_dir)]) == 0
    assert capsys.readouterr().out == f"{run_dir} has finished its 0 epochs; genotype.json is its result\n"
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # no log line, no session


def frame_run(run_dir: Path, resume: Path | None = None) -> tuple[object, object]:
    """A Run and its run settings on the CPU, as both loops make them."""
    from types import SimpleNamespace

    from nas.run.runtime import Run

    cfg = SimpleNamespace(device="cpu", amp="off", threads=0, deterministic=False, dir=str(run_dir), overwrite=False,
                          checkpoint_every=2, tensorboard=False, log_every=0)
    return Run(cfg, 0, "frame", "train", "seed: 0\n", resume, quiet=True), cfg


def test_the_loop_frame_checkpoints_when_due_and_resumes_mid_epoch(tmp_path: Path) -> None:
    """The frame both loops use: a checkpoint every run.checkpoint_every steps holds the objects, the step and the
    epoch's sums so far; one at each epoch's end starts the next epoch; a frame made on the resumed run goes on from
    the step after the checkpoint with the sums carried over, and a non-finite loss names the step."""
    from nas.run.runtime import Loop

    run, cfg = frame_run(tmp_path / "r")
    model = torch.nn.Linear(2, 1)
    saved: list[dict] = []
    run.save = saved.append  # type: ignore[attr-defined]
    with Loop(run, cfg, 2, 3, {"model": model, "scaler": None}, (), extra=lambda: {"extra": 7}) as frame:
        assert list(frame.epochs()) == [0, 1]
        for epoch in frame.epochs():
            meter, first = frame.start_epoch(epoch, sums=1, streams=1)
            for step in range(first + 1, 4):
                frame.check(torch.tensor(1.0), step)
                meter.add([torch.tensor(float(step))], 1)
                frame.stepped(step, lambda m: {})
            frame.end_epoch()
            frame.epoch_done()
    assert [(s["epoch"], s["step"]) for s in saved] == [(0, 2), (1, 0), (1, 2), (2, 0)]
    mid = saved[0]
    assert mid["kind"] == "train" and mid["extra"] == 7 and mid["scaler"] is None
    assert torch.equal(mid["model"]["weight"], model.state_dict()["weight"])
    assert mid["partial"]["sums"].tolist() == [3.0] and mid["partial"]["images"] == 2  # steps 1 and 2

    from nas.run.checkpoint import save_checkpoint

    save_checkpoint(run.checkpoint_path, {**mid, "rng": saved[0]["rng"]})
    resumed, cfg = frame_run(tmp_path / "r", resume=tmp_path / "r")
    with Loop(resumed, cfg, 2, 3, {"model": torch.nn.Linear(2, 1)}, ()) as frame:
        assert list(frame.epochs()) == [0, 1]
        meter, first = frame.start_epoch(0, sums=1, streams=1)
        assert first == 2 and meter.images == [2] and meter.local() == [3.0]
        with pytest.raises(NumericalFault, match=r"not finite \(nan\) at epoch 1 step 3; the last good checkpoint "
                                                 r"is kept: .*checkpoint\.pt"):
            frame.check(torch.tensor(float("nan")), 3)
