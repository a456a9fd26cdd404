"""benchmarks/compute_curve.py's reading of finished studies: one row per method with its cells' percentiles, CPU and
how far alpha moved, and a record of earlier rows that the rows measured now replace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compute_curve.py"


def fake_study(root: Path) -> Path:
    study = root / "study"
    cells = []
    for method, pcts in (("gdas-steps", (40.0, 60.0)), ("gdas-steps-warm", (95.0, 97.0))):
        for seed, pct in enumerate(pcts):
            cid = f"{method}-s{seed}"
            (study / "search" / cid).mkdir(parents=True)
            logits = [[2.0, 0.0, 0.0, 0.0, 0.0]] * 6 if method == "gdas-steps-warm" else [[0.0] * 5] * 6
            (study / "search" / cid / "alpha.jsonl").write_text(json.dumps({"epoch": 0, "normal": logits}) + "\n")
            cells.append({"id": cid, "method": method, "genotype": "g", "ops": {"skip_connect": seed,
                          "parameter_free": 2 * seed}, "benchmark": {"percentile": {"cifar10": pct},
                                                                     "200": {"cifar10": {"valid": 80.0 + pct / 10}}}})
    report = {"cells": cells, "quality": [{"method": "gdas-steps", "cpu_s": 360.0},
                                          {"method": "gdas-steps-warm", "cpu_s": 300.0}],
              "config": {"per_method": {"gdas-steps-warm": {"epochs": 26}}, "search": {"epochs": 100},
                         "data": {"subset": 5000}, "model": {"space": "nb201"}}}
    (study / "report.json").write_text(json.dumps(report))
    return study


def test_a_hand_run_study_gives_one_row_a_method_and_replaces_its_rows_in_the_record(tmp_path: Path) -> None:
    study = fake_study(tmp_path)
    record = tmp_path / "record.json"
    old = {"method": "gdas-steps", "images": 5000, "epochs": 100, "bn_stats": True, "cells": 3, "cpu_min": 9.0,
           "pct_mean": 1.0, "pct_min": 1.0, "pct_max": 1.0, "acc_mean": 70.0, "acc_std": 0.0, "skips": 0.0,
           "param_free": 6.0, "alpha_top": 0.2, "genotypes": []}
    other = dict(old, method="darts", epochs=20, pct_mean=70.0, pct_min=60.0, pct_max=80.0)
    record.write_text(json.dumps([old, other]))
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "curve"), "--points", "",
                          "--bn-points", "", "--report-only", "--study", str(study), "--record", str(record),
                          "--plot", str(tmp_path / "curve.png")], capture_output=True, text=True, check=True).stdout
    rows = {r["method"]: r for r in json.loads(record.read_text())}
    assert set(rows) == {"darts", "gdas-steps", "gdas-steps-warm"}  # the old gdas-steps row replaced, darts kept
    assert rows["gdas-steps"]["pct_mean"] == 50.0 and rows["gdas-steps"]["cpu_min"] == 6.0
    assert rows["gdas-steps"]["epochs"] == 100 and rows["gdas-steps-warm"]["epochs"] == 26
    assert abs(rows["gdas-steps"]["alpha_top"] - 0.2) < 1e-6  # uniform logits
    assert rows["gdas-steps-warm"]["alpha_top"] > 0.6  # exp(2) / (exp(2) + 4)
    assert max(rows["gdas-steps-warm"]["alpha_per_op"].items(), key=lambda kv: kv[1])[0] == "none"  # column 0
    assert sum(rows["gdas-steps"]["alpha_per_op"].values()) > 0.999
    assert rows["gdas-steps-warm"]["param_free"] == 1.0 and rows["gdas-steps-warm"]["pct_min"] == 95.0
    assert "| gdas-steps-warm | 5000 | 26 | yes | 2 | 5.0 | 89.60 ± 0.14 | 96th (95th, 97th)" in out
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_a_study_without_its_report_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--points", "", "--bn-points", "",
                          "--report-only", "--study", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert out.returncode != 0 and "no report.json there" in out.stderr
