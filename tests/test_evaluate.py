"""evaluate.py end to end: training from scratch writes results.json, --summary, --seeds, every genotype input
format, and bad input as one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nas.cli import evaluate_main, search_main
from nas.config import TrainConfig, load_config
from nas.space.genotype import published_genotype, read_genotype

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/eval/quick.yaml", "train.epochs=2", "data.synthetic.train=128", "data.synthetic.test=40",
        "data.image_size=8", "data.batch_size=16", "model.C=4", "model.layers=3"]
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"


def test_training_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert evaluate_main([*TINY, "--genotype", "GDAS_V1", f"run.dir={run_dir}"]) == 0
    assert "done: test accuracy" in capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("final_test_acc", "params", "flops", "wall_time_s", "images_per_s", "peak_mib", "config",
                "genotype"):
        assert key in results, key
    assert not [k for k in results if "best" in k]  # no epoch picked by its test accuracy: that selects on test
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= results["final_test_acc"] == metrics[-1]["test_acc"] <= 100
    assert results["peak_mib"] == max(m["peak_mib"] for m in metrics) > 0
    assert isinstance(results["params"], int) and isinstance(results["flops"], int) and results["flops"] > 0
    assert read_genotype(run_dir / "genotype.json") == published_genotype("GDAS_V1")
    assert load_config(TrainConfig, run_dir / "config.yaml").train.epochs == 2
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["drop_path"] for m in metrics] == [0.0, 0.1 * 1 / 2]  # grows linearly from 0 (quick.yaml: 0.1)
    assert all("test_acc" in m for m in metrics)


def test_summary_prints_params_and_flops_and_trains_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    rc = evaluate_main(["--config", "configs/eval/darts-cifar10.yaml", "--genotype", "DARTS_V2", "--summary",
                        f"run.dir={run_dir}"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 3_349_342 and out["flops"] > 500e6
    assert not run_dir.exists()


def test_summary_takes_every_genotype_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    search_dir = tmp_path / "search"
    assert search_main(["search.epochs=1", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16",
                        "model.C=4", "model.layers=3", f"run.dir={search_dir}"]) == 0
    g = read_genotype(search_dir / "genotype.json")
    (tmp_path / "g.txt").write_text(g.to_text())
    capsys.readouterr()
    params = set()
    for source in (str(search_dir), str(search_dir / "genotype.json"), str(tmp_path / "g.txt"), g.to_text(),
                   g.to_json()):
        assert evaluate_main(["--config", "configs/eval/quick.yaml", "--genotype", source, "--summary"]) == 0
        params.add(json.loads(capsys.readouterr().out)["params"])
    assert len(params) == 1  # the same genotype whichever way it came
    assert evaluate_main(["--config", "configs/eval/nb201-cifar10.yaml", "--genotype", NB201, "--summary"]) == 0
    assert json.loads(capsys.readouterr().out)["space"] == "nb201"


def test_seeds_run_repeats_and_report_mean_and_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "rep"
    assert evaluate_main([*TINY, "train.epochs=1", "--genotype", "DARTS_V1", "--seeds", "3,5",
                          f"run.dir={run_dir}"]) == 0
    assert "2 runs: final test accuracy" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == [3, 5]
    accs = [json.loads((run_dir / f"seed-{s}" / "results.json").read_text())["final_test_acc"] for s in (3, 5)]
    assert summary["final_test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert summary["final_test_acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert [json.loads((run_dir / f"seed-{s}" / "results.json").read_text())["seed"] for s in (3, 5)] == [3, 5]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--genotype", "DARTS_V3", "--summary"],
     "unknown genotype name 'DARTS_V3' (did you mean 'DARTS_V2'?); published:"),
    (["--genotype", "GDAS", "--summary"], "unknown genotype name 'GDAS'"),
    (["--genotype", "tests/", "--summary"], "has no genotype.json"),
    (["--genotype", "pyproject.toml", "--summary"], "pyproject.toml: cannot read genotype"),
    (["--config", "configs/eval/darts-cifar10.yaml", "--genotype", NB201, "--summary"],
     "the genotype is of the nb201 space but this recipe trains model.space=darts networks"),
    (["--genotype", NB201, "--summary", "model.space=null"], "apply only to darts-space networks"),
    (["--genotype", "DARTS_V2", "--seeds", "two"], "--seeds 'two' is neither a count"),
    (["--genotype", "DARTS_V2", "--seeds", "1,1"], "no seed twice"),
    (["--genotype", "DARTS_V2", "--summary", "train.epoch=3"], "did you mean 'train.epochs'?"),
    (["--genotype", "DARTS_V2", "--summary", "data.train_portion=0.3"], "applies only to search"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_genotype_flag_is_a_usage_error() -> None:
    proc = run_cli("--summary")
    assert proc.returncode == 2 and "--genotype" in proc.stderr


REPEATS = [*TINY, "--genotype", "DARTS_V1", "--seeds", "0,1,2", "run.deterministic=true", "run.tensorboard=false",
           "--quiet"]


def stop_in(monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool]) -> None:
    """SIGTERM to this process as nas.train's ``name`` is called, when ``when`` says so."""
    import nas.train

    real = getattr(nas.train, name)

    def signalled(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(nas.train, name, signalled)


def results(run_dir: Path, seed: int) -> bytes:
    return (run_dir / f"seed-{seed}" / "results.json").read_bytes()


def test_seeds_stopped_before_a_checkpoint_carry_on_with_the_same_command(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped as seed 1's training starts, before its first checkpoint: seed 1's files are removed, and the same
    command keeps seed 0's training, runs seeds 1 and 2 and writes the summary."""
    run_dir = tmp_path / "rep"
    args = [*REPEATS, "train.epochs=1", f"run.dir={run_dir}"]
    stop_in(monkeypatch, "make_network", lambda cfg, *a: cfg.seed == 1)
    assert evaluate_main(args) == 143
    monkeypatch.undo()
    assert (f"removed what the run had written in {run_dir / 'seed-1'}; run the same command, or python -m nas "
            f"evaluate --resume {run_dir}, to start it again") in capsys.readouterr().err
    assert not (run_dir / "seed-1").exists() and not (run_dir / "summary.json").exists()
    first = results(run_dir, 0)
    assert evaluate_main([a for a in args if a != "--quiet"]) == 0  # the same command, saying what it does
    out = capsys.readouterr().out
    assert f"continuing the trainings of 3 seeds in {run_dir}: seed 0 has finished, seed 1 starts, seed 2 starts" in out
    assert results(run_dir, 0) == first  # kept as it was
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and all((run_dir / f"seed-{s}" / "model.pt").exists() for s in (0, 1, 2))


def test_seeds_stopped_with_a_checkpoint_carry_on_with_resume_on_their_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped after seed 1's first epoch: the hint names the parent directory, whose --resume keeps seed 0, resumes
    seed 1 from its checkpoint, runs seed 2 and writes the summary of an uninterrupted run. Another genotype into the
    same directory is refused and changes nothing; resuming the finished trainings writes nothing."""
    whole, run_dir = tmp_path / "whole", tmp_path / "rep"
    args = [*REPEATS, "train.epochs=2", "train.eval_every=1"]
    assert evaluate_main([*args, f"run.dir={whole}"]) == 0
    calls = {"n": 0}

    def third(*a: Any) -> bool:  # 2 tests a training: the 3rd is seed 1's first
        calls["n"] += 1
        return calls["n"] == 3

    stop_in(monkeypatch, "evaluate", third)
    assert evaluate_main([*args, f"run.dir={run_dir}"]) == 143
    monkeypatch.undo()
    assert (f"stopped after epoch 1 with a checkpoint; resume with: python -m nas evaluate --resume {run_dir}\n"
            in capsys.readouterr().err)
    before = (run_dir / "seed-1" / "checkpoint.pt").read_bytes()
    other = [a if a != "DARTS_V1" else "DARTS_V2" for a in args]
    assert evaluate_main([*other, f"run.dir={run_dir}"]) == 2
    assert (f"run.dir={str(run_dir)!r} already holds repeated trainings of another genotype; continue them with "
            f"python -m nas evaluate --resume {run_dir}, choose another run.dir") in capsys.readouterr().err
    assert (run_dir / "seed-1" / "checkpoint.pt").read_bytes() == before and not (run_dir / "seed-2").exists()
    assert evaluate_main(["--resume", str(run_dir)]) == 0
    assert "seed 1 resumes from its checkpoint" in capsys.readouterr().out
    for s in (0, 1, 2):
        a, b = (json.loads(results(d, s)) for d in (whole, run_dir))
        assert a["final_test_acc"] == b["final_test_acc"], s
    summary = (run_dir / "summary.json").read_text()
    assert json.loads(summary)["final_test_acc"] == json.loads((whole / "summary.json").read_text())["final_test_acc"]
    assert evaluate_main(["--resume", str(run_dir)]) == 0
    assert capsys.readouterr().out == f"{run_dir} has finished its 3 trainings; summary.json is its result\n"
    assert (run_dir / "summary.json").read_text() == summary


def test_seeds_refused_by_their_data_leave_nothing(tmp_path: Path) -> None:
    """Repeated trainings whose first training refuses its data leave no parent directory behind."""
    run_dir = tmp_path / "rep"
    args = ["--config", "configs/eval/quick.yaml", "--genotype", "DARTS_V1", "--seeds", "2", "data.name=imagefolder",
            f"data.root={tmp_path / 'none'}", "--quiet"]
    assert evaluate_main([*args, f"run.dir={run_dir}"]) == 2
    assert not run_dir.exists()
