"""benchmarks/score_correlation.py at a toy size: one row per score and ensemble, correlations that are
correlations, several image subsets summarised by their spread, and a cache that makes the second run score nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "score_correlation.py"



def noise_folder(root: Path, classes: int = 3, per_class: int = 16) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / f"c{c}" / f"{i}.png")
    return root

def rows_of(stdout: str) -> dict[str, list[str]]:
    """The table's rows by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("score",):
            rows[cells[0]] = cells[1:]
    return rows

def test_scores_and_ensembles_against_the_table_with_a_cache(tmp_path: Path) -> None:
    folder = noise_folder(tmp_path / "img")
    cache = tmp_path / "cache" / "scores.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--data", str(folder), "--cells", "6", "--images", "40", "--batch", "8",
           "--C", "2", "--subset-seeds", "0,1", "--scores", "naswot,params", "--ensembles", "naswot+params",
           "--cache", str(cache)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    rows = rows_of(first.stdout)
    assert list(rows) == ["naswot", "params", "logrank(naswot+params)", "vote(naswot+params)"]
    assert float(rows["naswot"][0]) > 0 and rows["logrank(naswot+params)"][0] == ""  # speed: scores only
    for row in rows.values():  # two subsets: "mean (lowest, highest)" of each correlation
        for col in row[1:-1]:
            if col.startswith("nan"):  # a top 10% of fewer than two of the six cells has no correlation
                continue
            m = re.fullmatch(r"(-?[\d.]+) \((-?[\d.]+), (-?[\d.]+)\)( \(n=\d+\))?", col)
            assert m, col
            mean, low, high = (float(v) for v in m.groups()[:3])
            assert -1 <= low <= mean <= high <= 1
    assert len(cache.read_text().splitlines()) == 12  # 6 cells x 2 subsets, both scores in one line each
    assert "the ResNet cell: CIFAR-10 90.86" in first.stdout

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    again = rows_of(second.stdout)
    assert again["naswot"][0] == ""  # nothing scored: every value came from the cache
    assert [r[1:] for r in again.values()] == [r[1:] for r in rows.values()]
    assert len(cache.read_text().splitlines()) == 12
