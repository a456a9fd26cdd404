"""evaluate.py end to end: training from scratch writes results.json, --summary, --seeds, every genotype input
format, and bad input as one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
