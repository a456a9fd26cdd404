"""NAS-Bench-201 lookup against a small benchmark file that the test builds in the NATS-Bench API's own format
(its ArchResults and ResultsCount classes, saved with its pickle_save): the record of a cell, the command line,
and one-line errors for a missing or unreadable file, a cell the benchmark lacks and a DARTS-space genotype."""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nas.bench201 import BenchmarkError, epoch_metrics, load_benchmark, lookup
from nas.cli import bench201_main
from nas.space.genotype import published_genotype, write_genotype
from nas.space.nb201 import from_nb201_string

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


def make_benchmark(folder: Path, hps: tuple[str, ...] = ("12", "200"), cells: list[str] = CELLS,
                   accuracy: Callable[[int, str, str, str, int], float] = accuracy) -> Path:
    """A benchmark file of ``cells`` (cell i has index i) with ``accuracy`` as every recorded accuracy."""
    from nats_bench.api_utils import ArchResults, ResultsCount, pickle_save

    arch2infos = {}
    for i, arch in enumerate(cells):
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
    pickle_save({"meta_archs": cells, "arch2infos": arch2infos, "evaluated_indexes": list(range(len(cells)))},
                str(folder / "NATS-tss-test"), ext=".pickle.pbz2")
    return folder / "NATS-tss-test.pickle.pbz2"


def make_simple(bench: Path) -> Path:
    """The same benchmark as a "-simple" directory, as NATS-Bench ships it: meta.pickle.pbz2 with the cells, and one
    file per cell (000000.pickle.pbz2, ...) that the API reads when the cell is first asked for."""
    from nats_bench.api_utils import pickle_load, pickle_save

    data = pickle_load(str(bench))
    folder = bench.parent / "NATS-tss-test-simple"
    folder.mkdir()
    pickle_save({"meta_archs": data["meta_archs"]}, str(folder / "meta"), ext=".pickle.pbz2")
    for index, infos in data["arch2infos"].items():
        pickle_save(infos, str(folder / f"{index:06d}"), ext=".pickle.pbz2")
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize("form", ["file", "simple directory"])
def test_lookup_returns_the_benchmark_record_of_the_cell(bench: Path, tmp_path: Path, form: str) -> None:
    if form == "file":
        api = load_benchmark(bench)
    else:
        copy = tmp_path / bench.name
        copy.write_bytes(bench.read_bytes())
        api = load_benchmark(make_simple(copy))
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


def test_a_simple_directory_missing_a_cells_file_is_one_line(bench: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / bench.name
    copy.write_bytes(bench.read_bytes())
    folder = make_simple(copy)
    (folder / "000002.pickle.pbz2").unlink()
    assert bench201_main([CELLS[0], "--benchmark", str(folder)]) == 0  # the other cells still read
    capsys.readouterr()
    assert bench201_main([CELLS[2], "--benchmark", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"lists cell {CELLS[2]} (index 2) but its file cannot be read" in err
    assert err.count("\n") == 1


def test_a_path_under_home_is_expanded(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(bench.parent))  # the shell leaves key=~/... unexpanded
    assert lookup(load_benchmark(f"~/{bench.name}"), from_nb201_string(CELLS[0]))["index"] == 0


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


# ---------------------------------------------------------------------------------------------- comparison studies

ROOT = Path(__file__).resolve().parents[1]
OPS = ("nor_conv_3x3", "skip_connect")  # a 2-op space: 64 cells, few enough for a benchmark that holds every one
ALL_CELLS = ["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops) for ops in itertools.product(OPS, repeat=6)]
STUDY = ["methods=[gdas]", "seeds=[0,1]", "random.samples=3", "data.synthetic.train=128", "data.synthetic.test=32",
         "data.image_size=8", "data.batch_size=16", "model.space=nb201", f"model.ops=[{','.join(OPS)}]", "model.C=4",
         "model.layers=1", "search.epochs=1", "eval.benchmark_data=cifar100", "run.tensorboard=false"]


def study_accuracy(cell: int, dataset: str, split: str, hp: str, epoch: int) -> float:
    """Every cell its own accuracies in [40, 95), fixed by (cell, data set, split, recipe)."""
    return round(40 + 55 * random.Random(f"{cell} {dataset} {split} {hp}").random(), 2)


def test_a_study_scores_its_cells_by_lookup_instead_of_retraining(tmp_path: Path) -> None:
    # first a benchmark of half the space: the random cells of random.seed=0 are indexes 55, 57 and 10, so some of
    # the study's cells are in it and some are not
    path = make_benchmark(tmp_path, hps=("200",), cells=ALL_CELLS[:32], accuracy=study_accuracy)
    study = tmp_path / "study"
    first = subprocess.run([sys.executable, "compare.py", *STUDY, f"eval.benchmark={path}", f"run.dir={study}",
                            "--jobs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    ids = ["gdas-s0", "gdas-s1", "random-0", "random-1", "random-2"]
    archs = {i: nb201_string(study, i) for i in ids}
    missing = [i for i in ids if archs[i] not in ALL_CELLS[:32]]
    assert 0 < len(missing) < len(ids) and first.returncode == 1, first.stdout + first.stderr
    assert f"{len(missing)} of {2 + len(ids)} runs and lookups did not finish" in first.stderr
    report = json.loads((study / "report.json").read_text())
    assert report["scoring"]["by"] == "benchmark" and not (study / "train").exists()
    assert {u["run"]: u["state"] for u in report["unfinished"]} == {
        f"bench/{i}": f"not looked up: the benchmark has no cell {archs[i]}" for i in missing}

    # the whole benchmark (all 64 cells of the space): --report looks up what is missing; the rest is kept
    kept = {i: (study / "bench" / f"{i}.json").read_bytes() for i in ids if i not in missing}
    assert make_benchmark(tmp_path, hps=("200",), cells=ALL_CELLS, accuracy=study_accuracy) == path
    again = subprocess.run([sys.executable, "compare.py", "--report", str(study)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all((study / "bench" / f"{i}.json").read_bytes() == b for i, b in kept.items())
    report = json.loads((study / "report.json").read_text())
    assert report["unfinished"] == [] and report["scoring"]["recipes"] == ["200"]
    cells = {c["id"]: c for c in report["cells"]}
    scores = {}
    for i in ids:  # cifar100's x-test accuracy of the 200-epoch recipe
        index = ALL_CELLS.index(archs[i])
        scores[i] = study_accuracy(index, "cifar100", "x-test", "200", 199)
        assert cells[i]["acc"] == {"benchmark": scores[i]}
        assert cells[i]["benchmark"]["index"] == index
        assert cells[i]["params"] == pytest.approx(0.1 * (index + 1) * 1e6)  # as the benchmark records them
    gdas = report["methods"][0]["acc"]
    assert gdas["n"] == 2 and gdas["mean"] == pytest.approx((scores["gdas-s0"] + scores["gdas-s1"]) / 2)
    assert report["random"]["acc"]["n"] == 3
    md = (study / "report.md").read_text()
    assert "CIFAR-100 test accuracy after the benchmark's 200-epoch" in md
    assert "| method | benchmark test acc % |" in md
    assert "**no cell was retrained**" in md and "retraining:" not in md
    looked_up = re.findall(r"NAS-Bench-201: (\S+): test accuracy CIFAR-10", again.stdout)
    assert sorted(looked_up) == sorted(missing)  # only what the first run could not look up


def nb201_string(study: Path, cell: str) -> str:
    """The NB201 string of a study's cell."""
    from nas.space.genotype import read_genotype
    from nas.space.nb201 import to_nb201_string

    folder = study / ("random" if cell.startswith("random") else "search") / cell
    return to_nb201_string(read_genotype(folder / "genotype.json"))


BAD = [  # (tool, overrides, message)
    ("search", ["model.space=darts", "model.layers=3"], "search.benchmark applies only to model.space=nb201"),
    ("search", ["search.benchmark={missing}"], "benchmark file '{missing}' not found"),
    ("study", ["model.space=darts", "model.layers=3", "model.ops=null"],
     "eval.benchmark applies only to model.space=nb201"),
    ("study", ["eval.benchmark_data=null"], "data.name=synthetic is not one; set eval.benchmark_data to one of "
                                            "cifar10, cifar100, imagenet16-120"),
    ("study", ["eval.benchmark={missing}"], "benchmark file '{missing}' not found"),
]


@pytest.mark.parametrize("tool,overrides,message", BAD, ids=[f"{b[0]}-{b[2][:24]}" for b in BAD])
def test_a_search_or_study_with_a_bad_benchmark_writes_nothing(bench: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], tool: str,
                                                               overrides: list[str], message: str) -> None:
    from nas.cli import compare_main, search_main

    main, base = (search_main, [*SEARCH, f"search.benchmark={bench}"]) if tool == "search" else \
        (compare_main, [*STUDY, f"eval.benchmark={bench}"])
    missing = tmp_path / "missing"
    assert main([*base, *[o.format(missing=missing) for o in overrides], f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(missing=missing) in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
