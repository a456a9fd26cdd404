"""benchmarks/search_step.py at a toy size: the report's fields and ratios (the loop frame's time beside the search
steps'), and the GDAS samples the child replays (recorded per step, different in every round)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "search_step.py"
TOY = ["--C=4", "--layers=1", "--batch=8", "--steps=2", "--warmup=1", "--threads=1"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_report_fields_and_ratios() -> None:
    out = bench("--space=nb201", *TOY, "--rounds=1", "--formats=nchw,nhwc")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for v in ("gdas", "child", "darts"):
        assert report[f"{v}_ms"] == min(report[f"{v}_ms_nchw"], report[f"{v}_ms_nhwc"]) > 0
        assert report[f"{v}_format"] in ("nchw", "nhwc")
        assert report[f"{v}_peak_mib"] >= 0
        assert 0 <= report[f"{v}_data_share"] < 1
    for v in ("gdas", "darts"):  # the search loop's frame after each step, beside the step
        assert report[f"{v}_frame_ms"] > 0 and 0 < report[f"{v}_frame_share"] < 1
    assert "child_frame_ms" not in report  # the child trains plain networks, outside the search's frame
    assert abs(report["gdas_over_child"] - report["gdas_ms"] / report["child_ms"]) < 1e-3
    assert abs(report["darts_over_gdas"] - report["darts_ms"] / report["gdas_ms"]) < 1e-2
    assert report["settings"] == {"space": "nb201", "C": 4, "layers": 1, "batch": 8, "steps": 2, "warmup": 1,
                                  "rounds": 1, "threads": 1, "device": "cpu", "formats": ["nchw", "nhwc"]}


def test_gdas_worker_records_samples_per_round(tmp_path: Path) -> None:
    drawn = []
    for r in range(2):
        samples = tmp_path / f"samples-{r}.json"
        out = bench("--space=darts", *TOY, "--variant=gdas", "--format=nchw", f"--round={r}", f"--samples={samples}")
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["times_ms"]) == 2  # warm-up steps are dropped
        recorded = json.loads(samples.read_text())
        assert len(recorded) == 2 * 3  # a weight step and an alpha step per step, warm-up included
        for step in recorded:
            assert set(step) == {"normal", "reduce"}
            assert all(len(ix) == 14 and all(0 <= i < 8 for i in ix) for ix in step.values())
        drawn.append(recorded)
        child = bench("--space=darts", *TOY, "--variant=child", "--format=nchw", f"--round={r}",
                      f"--samples={samples}")
        assert child.returncode == 0, child.stderr
    assert drawn[0] != drawn[1]


def test_failing_worker_is_reported() -> None:
    out = bench("--space=nb201", *TOY, "--rounds=1", "--formats=nchw", "--device=nonsense")
    assert out.returncode != 0
    assert "the gdas worker (nchw) failed" in out.stderr
