"""The budget study's table: each budgeted search's cell against the cells of the whole space that fit the same
budget, all read from NAS-Bench-201's table (the [bench] extra).

    python benchmarks/budget_study.py STUDY_DIR [--data cifar10]

STUDY_DIR is a finished study of configs/compare/nb201-budget.yaml (any study whose methods set
search.budget.metric=params). For each method: its target, the found cells' parameters (the table's, which nas's
counter matches exactly), whether every cell fits, their validation accuracy and percentile among the cells that fit,
and the best cell that fits. The percentile is the share of the fitting cells whose mean validation accuracy is
below the found cell's.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
from pathlib import Path

from nas.bench201 import arch_of_key, load_benchmark
from nas.space.genotype import read_genotype
from nas.study.plan import load_study, method_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", metavar="STUDY_DIR")
    parser.add_argument("--data", default="cifar10", choices=("cifar10", "cifar100", "imagenet16-120"))
    args = parser.parse_args(argv)
    lay = load_study(args.study)
    table = load_benchmark("table")
    data = args.data
    size = {k: table.rows[data][k]["model_size"][0] for k in table.keys}
    rows = []
    for method in lay.cfg.methods:
        budget = method_options(lay.cfg, method).budget
        if budget.metric != "params":
            continue
        fit = sorted(table.accuracy(k, data) for k in table.keys if size[k] <= budget.target)
        best_key = max((k for k in table.keys if size[k] <= budget.target), key=lambda k: table.accuracy(k, data))
        cells = [c for c in lay.cells if c.method == method and (c.source / "genotype.json").exists()]
        found = []
        for c in cells:
            key = table.key(read_genotype(c.source / "genotype.json"))
            acc = table.accuracy(key, data)
            found.append({"cell": c.id, "params_m": size[key], "fits": size[key] <= budget.target, "acc": acc,
                          "pct_fit": 100 * bisect.bisect_left(fit, acc) / len(fit)})
        accs = [f["acc"] for f in found]
        rows.append({"method": method, "target": budget.target, "fitting_cells": len(fit),
                     "best_fit": fit[-1], "best_arch": arch_of_key(best_key), "cells": found,
                     "acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "pct_mean": statistics.fmean(f["pct_fit"] for f in found),
                     "pct_min": min(f["pct_fit"] for f in found), "all_fit": all(f["fits"] for f in found),
                     "params_max": max(f["params_m"] for f in found)})
    print(f"| method | budget (M params) | cells that fit | found cells' params (max) | all within | {data} valid "
          "acc % | percentile among the cells that fit (min) | best cell that fits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['target']:g} | {r['fitting_cells']} | {r['params_max']:.3f} | "
              f"{'yes' if r['all_fit'] else 'NO'} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} (n={len(r['cells'])}) | "
              f"{r['pct_mean']:.0f}th ({r['pct_min']:.0f}th) | {r['best_fit']:.2f} |")
    (Path(args.study) / "budget_study.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
