"""NAS-Bench-201 lookup against a small benchmark file that the test builds in the NATS-Bench API's own format
(its ArchResults and ResultsCount classes, saved with its pickle_save): the record of a cell, the command line,
and one-line errors for a missing or unreadable file, a cell the benchmark lacks and a DARTS-space genotype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.bench201 import BenchmarkError, epoch_metrics, load_benchmark, lookup
from nas.cli import bench201_main
from nas.genotype import from_nb201_string, published_genotype, write_genotype

nats = pytest.importorskip("nats_bench")

CELLS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
         "|avg_pool_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|avg_pool_3x3~1|none~2|",
         "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"]
EVALS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",), "cifar100": ("x-valid", "x-test"),
         "ImageNet16-120": ("x-valid", "x-test")}


def accuracy(cell: int, dataset: str, split: str, hp: str, epoch: int) -> float:
    """A distinct, known value for every (cell, data set, split, recipe, epoch)."""
    d = list(EVALS).index(dataset)
    s = ["train", "x-valid", "x-test", "ori-test"].index(split)
    return 10.0 * cell + 2.0 * d + 0.5 * s + (1.0 if hp == "200" else 0.0) + epoch / 1000


def make_benchmark(folder: Path, hps: tuple[str, ...] = ("12", "200")) -> Path:
    from nats_bench.api_utils import ArchResults, ResultsCount, pickle_save

    arch2infos = {}
    for i, arch in enumerate(CELLS):
        infos = {}
        for hp in hps:
            epochs = int(hp)
            results = ArchResults(i, arch)
            for dataset, names in EVALS.items():
                train = {e: accuracy(i, dataset, "train", hp, e) for e in range(epochs)}
                ones = {e: 1.0 for e in range(epochs)}
                count = ResultsCount(dataset, None, train, ones, 0.1 * (i + 1), 10.0 * (i + 1), {"arch_str": arch},
                                     777, epochs, [0.01])
                count.update_train_info(train, None, ones, ones)
                keys = [(n, e) for n in names for e in range(epochs)]
                count.update_eval({f"{n}@{e}": accuracy(i, dataset, n, hp, e) for n, e in keys},
                                  {f"{n}@{e}": 1.0 for n, e in keys}, {f"{n}@{e}": 0.1 for n, e in keys})
                results.update(dataset, 777, count)
            infos[hp] = results.state_dict()
        arch2infos[i] = infos
    pickle_save({"meta_archs": CELLS, "arch2infos": arch2infos, "evaluated_indexes": list(range(len(CELLS)))},
                str(folder / "NATS-tss-test"), ext=".pickle.pbz2")
    return folder / "NATS-tss-test.pickle.pbz2"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("bench"))


def test_lookup_returns_the_benchmark_record_of_the_cell(bench: Path) -> None:
    api = load_benchmark(bench)
    record = lookup(api, from_nb201_string(CELLS[1]))
    assert record["index"] == 1 and record["arch"] == CELLS[1]
    last = 199
    c10 = record["200"]["cifar10"]  # train and valid from cifar10-valid, test from cifar10 (trained on all of it)
    assert c10 == {"train": accuracy(1, "cifar10-valid", "train", "200", last),
                   "valid": accuracy(1, "cifar10-valid", "x-valid", "200", last),
                   "test": accuracy(1, "cifar10", "ori-test", "200", last)}
    for dataset in ("cifar100", "ImageNet16-120"):
        assert record["200"][dataset] == {split: accuracy(1, dataset, name, "200", last)
                                          for split, name in (("train", "train"), ("valid", "x-valid"),
                                                              ("test", "x-test"))}
    assert record["12"]["cifar100"]["test"] == accuracy(1, "cifar100", "x-test", "12", 11)
    assert record["params_mb"]["cifar10"] == pytest.approx(0.2) and record["flops_m"]["cifar100"] == pytest.approx(20)
    flat = epoch_metrics(record)
    assert flat["bench_cifar10_test"] == c10["test"] and flat["bench_imagenet16_120_valid"] == \
        record["200"]["ImageNet16-120"]["valid"]


def test_the_command_prints_one_json_line_for_a_string_a_file_or_a_run_directory(
        bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_genotype(from_nb201_string(CELLS[2]), run / "genotype.json")
    for source, index in ((CELLS[0], 0), (str(run / "genotype.json"), 2), (str(run), 2)):
        assert bench201_main([source, "--benchmark", str(bench)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["index"] == index


@pytest.mark.parametrize("case,message", [
    ("missing", "benchmark file '{missing}' not found"),
    ("unreadable", "is not a readable NAS-Bench-201 / NATS-Bench topology benchmark"),
    ("absent", "the benchmark has no cell |none~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
    ("darts", "NAS-Bench-201 holds only nb201-space cells; this genotype is in the darts space"),
])
def test_bad_input_is_one_line_and_exit_2(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                          message: str) -> None:
    missing = tmp_path / "nope.pbz2"
    junk = tmp_path / "junk.pbz2"
    junk.write_bytes(b"not a benchmark")
    genotype, path = {"missing": (CELLS[0], missing), "unreadable": (CELLS[0], junk),
                      "absent": ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", bench),
                      "darts": ("DARTS_V2", bench)}[case]
    assert bench201_main([genotype, "--benchmark", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.format(missing=missing) in err and len(err.splitlines()) == 1
    with pytest.raises(BenchmarkError):
        g = published_genotype("DARTS_V2") if case == "darts" else from_nb201_string(genotype)
        lookup(load_benchmark(path), g)


SEARCH = ["model.space=nb201", "model.C=4", "model.layers=1", "data.synthetic.train=64", "data.image_size=8",
          "data.batch_size=16", "search.epochs=2", "--quiet"]


def test_a_search_logs_each_epochs_benchmark_accuracy(bench: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nas.cli import search_main

    run_dir = tmp_path / "run"
    # one candidate op: every epoch's genotype is the all-nor_conv_3x3 cell, which the test benchmark holds
    assert search_main([*SEARCH, "model.ops=[nor_conv_3x3]", f"search.benchmark={bench}", f"run.dir={run_dir}"]) == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for m in metrics:
        assert m["bench_index"] == 2
        assert m["bench_cifar10_test"] == accuracy(2, "cifar10", "ori-test", "200", 199)
        assert m["bench_imagenet16_120_valid"] == accuracy(2, "ImageNet16-120", "x-valid", "200", 199)
    test = accuracy(2, "cifar10", "ori-test", "200", 199)
    assert f"NAS-Bench-201: test accuracy CIFAR-10 {test:.2f}%" in (run_dir / "log.txt").read_text()
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("search/bench_cifar100_test")] == pytest.approx(
        [accuracy(2, "cifar100", "x-test", "200", 199)] * 2)

    # a cell the benchmark lacks is said, not fatal
    other = tmp_path / "other"
    assert search_main([*SEARCH, "model.ops=[skip_connect]", f"search.benchmark={bench}", f"run.dir={other}"]) == 0
    assert "NAS-Bench-201: the benchmark has no record of this cell" in (other / "log.txt").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["model.space=darts", "model.layers=3"], "search.benchmark applies only to model.space=nb201"),
    (["search.benchmark={missing}"], "benchmark file '{missing}' not found"),
])
def test_a_search_with_a_bad_benchmark_writes_nothing(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      overrides: list[str], message: str) -> None:
    from nas.cli import search_main

    missing = tmp_path / "missing"
    args = [*SEARCH, f"search.benchmark={bench}", *[o.format(missing=missing) for o in overrides],
            f"run.dir={tmp_path / 'run'}"]
    assert search_main(args) == 2
    assert message.format(missing=missing) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
