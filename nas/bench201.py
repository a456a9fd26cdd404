"""NAS-Bench-201 ground truth: the benchmark's own record of a cell (Dong & Yang, ICLR 2020), read with the
maintained NATS-Bench API (its topology search space is NAS-Bench-201's: ``pip install -e ".[bench]"``).

A lookup gives the cell's index in the benchmark and its train/valid/test accuracy after the 200-epoch recipe (and
the 12-epoch one where the file has it) on CIFAR-10, CIFAR-100 and ImageNet16-120, with params and FLOPs as the
benchmark records them. CIFAR-10's train and valid accuracy come from the benchmark's "cifar10-valid" runs (trained
on half of the training set), its test accuracy from the "cifar10" runs (trained on all of it), as the benchmark
reports them.

    python -m nas.bench201 GENOTYPE --benchmark PATH      GENOTYPE: an NB201 string, genotype.json or a run directory
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from nas.errors import UserError
from nas.genotype import Genotype, to_nb201_string

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
RECIPES = ("200", "12")  # training epochs of the benchmark's two recipes
BENCH_DATA = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "ImageNet16-120"}  # data.name: API's
LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}  # data.name: printed
INSTALL = 'pip install -e ".[bench]" (the NATS-Bench API, nats_bench)'


class BenchmarkError(UserError):
    """A benchmark file that is missing or unreadable, or a cell it does not hold."""


def load_benchmark(path: str | Path) -> Any:
    """The NATS-Bench topology API over ``path`` (``~`` expanded): a NATS-tss file (.pickle.pbz2, read whole) or its
    "-simple" directory (read per cell on demand)."""
    try:
        import nats_bench
    except ImportError:
        raise BenchmarkError(f"the NAS-Bench-201 lookup needs the NATS-Bench API: {INSTALL}") from None
    p = Path(path).expanduser()  # "~/..." in a key=value override reaches us unexpanded
    if not p.exists():
        raise BenchmarkError(f"benchmark file {str(path)!r} not found; get NATS-tss-v1_0-3ffb9-simple (a directory) "
                             "or NATS-tss-v1_0-3ffb9-full as the README says")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the API prints as it loads
            return nats_bench.create(str(p), "tss", fast_mode=p.is_dir(), verbose=False)
    except Exception as e:  # the API fails in many ways on a file that is not its own
        raise BenchmarkError(f"{str(path)!r} is not a readable NAS-Bench-201 / NATS-Bench topology benchmark "
                             f"({type(e).__name__})") from None


def arch_string(genotype: Genotype) -> str:
    if genotype.space != "nb201":
        raise BenchmarkError("NAS-Bench-201 holds only nb201-space cells; this genotype is in the "
                             f"{genotype.space} space")
    return to_nb201_string(genotype)


def lookup(api: Any, genotype: Genotype) -> dict[str, Any]:
    """The benchmark's record of ``genotype``: {"index", "arch", "200": {dataset: {train, valid, test}}, "12": ...,
    "params_mb": {dataset: ...}, "flops_m": {dataset: ...}} (a recipe absent from the file is left out)."""
    arch = arch_string(genotype)
    with contextlib.redirect_stdout(io.StringIO()):
        index = api.query_index_by_arch(arch)
    if index is None or index < 0:
        raise BenchmarkError(f"the benchmark has no cell {arch}")
    if api.fast_mode and index not in api.evaluated_indexes:  # a -simple directory: one file per cell, read now
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                api.reload(api.archive_dir, index)
        except Exception as e:  # the API asserts, or the file is damaged
            raise BenchmarkError(f"the benchmark directory {api.archive_dir!r} lists cell {arch} (index {index}) but "
                                 f"its file cannot be read ({type(e).__name__})") from None
    out: dict[str, Any] = {"index": int(index), "arch": arch}
    with contextlib.redirect_stdout(io.StringIO()):
        for hp in RECIPES:
            if hp not in api.avaliable_hps:  # the API's own spelling
                continue
            out[hp] = {dataset: _accuracies(api, index, dataset, hp) for dataset in DATASETS}
        hp = next(h for h in RECIPES if h in out)
        costs = {dataset: api.get_cost_info(index, dataset, hp=hp) for dataset in DATASETS}
    out["params_mb"] = {d: c["params"] for d, c in costs.items()}
    out["flops_m"] = {d: c["flops"] for d, c in costs.items()}
    return out


def _accuracies(api: Any, index: int, dataset: str, hp: str) -> dict[str, float | None]:
    """Train, valid and test accuracy (%) after the recipe's last epoch, averaged over the benchmark's seeds."""
    if dataset == "cifar10":
        half = api.get_more_info(index, "cifar10-valid", hp=hp, is_random=False)
        whole = api.get_more_info(index, "cifar10", hp=hp, is_random=False)
        return {"train": half["train-accuracy"], "valid": half.get("valid-accuracy"),
                "test": whole.get("test-accuracy")}
    info = api.get_more_info(index, dataset, hp=hp, is_random=False)
    return {"train": info["train-accuracy"], "valid": info.get("valid-accuracy"), "test": info.get("test-accuracy")}


def score(record: dict[str, Any], data: str) -> dict[str, Any]:
    """What a comparison study scores a cell by: the benchmark's test accuracy on ``data`` (a data.name: cifar10,
    cifar100 or imagenet16-120) under the 200-epoch recipe (the 12-epoch one when that is all the file has), with
    params and FLOPs as the benchmark records them for that data set."""
    name = BENCH_DATA[data]
    hp = recipe(record)
    return {"data": name, "recipe": hp, "test_acc": record[hp][name]["test"],
            "params": record["params_mb"][name] * 1e6, "flops": record["flops_m"][name] * 1e6}


def recipe(record: dict[str, Any]) -> str:
    """The recipe whose accuracies stand for the cell: the 200-epoch one, or the 12-epoch one when that is all the
    file has."""
    return "200" if "200" in record else "12"


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The flat numbers a search logs per epoch: bench_index and bench_<dataset>_<split> under recipe(record)."""
    return {"bench_index": record["index"], **{f"bench_{d.lower().replace('-', '_')}_{split}": v
                                                for d, accs in record[recipe(record)].items()
                                                for split, v in accs.items() if v is not None}}


def epoch_lookup(api: Any, genotype: Genotype) -> dict[str, Any]:
    """What a search logs for an epoch's genotype: its epoch_metrics, or {} for a cell the benchmark lacks (said in
    the epoch line, not fatal)."""
    try:
        found = lookup(api, genotype)
    except BenchmarkError:
        return {}
    return epoch_metrics(found)


def describe_epoch(truth: dict[str, Any]) -> str:
    """The epoch line's part: the benchmark's test accuracies of the epoch's cell."""
    if not truth:
        return "the benchmark has no record of this cell"
    keys = {data: f"bench_{data.replace('-', '_')}_test" for data in LABELS}  # as epoch_metrics names them
    tests = [f"{LABELS[data]} {truth[key]:.2f}%" for data, key in keys.items() if key in truth]
    return f"test accuracy {', '.join(tests)} (index {truth['bench_index']})"


if __name__ == "__main__":
    import sys

    from nas.cli import bench201_main

    sys.exit(bench201_main())
