"""The figures of a comparison study: report.json and plots, built only from what the runs record (metrics.jsonl,
genotypes.jsonl, alpha.jsonl, genotype.json, results.json, meta.json), so they can be rebuilt at any time from
whatever has finished; nas/study/markdown.py renders report.md from them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from nas.bench201 import DATASETS, recipe, score, split_of  # reading records only
from nas.config import to_dict
from nas.run.files import (
    ALPHA,
    BASELINES,
    GENOTYPE,
    GENOTYPES,
    META,
    METRICS,
    REPORT_JSON,
    REPORT_MD,
    RESULTS,
    SPACE,
    is_finished,
    run_state,
)
from nas.run.runlog import atomic_write_text, read_jsonl
from nas.searching.collapse import dominated, normal_free
from nas.space.genotype import Genotype, op_counts, read_genotype
from nas.study.markdown import markdown
from nas.study.plan import Cell, SearchRun, StudyLayout, benchmark_data, lookup_record, method_options

# ---------------------------------------------------------------------------------------------- reading

def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def stats(values: list[float]) -> dict[str, Any]:
    """mean, sample std (0 for one value), n, median, min and max; None for no values."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "median": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def alpha_decided(record: dict[str, Any]) -> float:
    """The largest softmax(alpha) of each edge, averaged over the edges of every cell type: 1/K at a uniform
    alpha, 1 when every edge has settled on one op."""
    rows = [np.asarray(a, dtype=np.float64) for k, a in record.items() if k != "epoch"]
    a = np.concatenate(rows)  # (E, K)
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(p.max(1).mean())


def op_shares(genotype: dict[str, Any], ops: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per searched cell type, the share of its kept edges that each op holds."""
    out: dict[str, dict[str, float]] = {}
    for cell in ("normal", "reduce"):
        if not isinstance(genotype.get(cell), list):  # absent, or GDAS-FRC's fixed reduction cell
            continue
        edges = [e[0] for node in genotype[cell] for e in node]
        out[cell] = {op: edges.count(op) / len(edges) for op in ops}
    return out


def read_search(run: SearchRun, ops: tuple[str, ...]) -> dict[str, Any]:
    metrics = read_jsonl(run.dir / METRICS)
    done = is_finished(run.dir, "search")
    times = np.cumsum([m["time_s"] for m in metrics]).tolist()
    sessions = (_json(run.dir / META) or {}).get("sessions", [])
    costs = [x for x in sessions if "cpu_s" in x]  # the sessions that finished (an interrupted one records none)
    return {
        "method": run.method, "seed": run.seed, "dir": str(run.dir), "done": done, "epochs": len(metrics),
        "supernet_valid_acc": metrics[-1]["valid_acc"] if metrics else None,
        "time_s": times[-1] if metrics else None,
        "cpu_s": sum(x["cpu_s"] for x in costs) if done and costs else None,
        "wall_s": sum(x["wall_s"] for x in costs) if done and costs else None,
        "peak_mib": max((m.get("peak_mib", float("nan")) for m in metrics), default=None),
        "curve": {"epoch": [m["epoch"] for m in metrics], "valid_acc": [m["valid_acc"] for m in metrics],
                  "seconds": times,
                  "alpha_decided": [alpha_decided(r) for r in read_jsonl(run.dir / ALPHA)],
                  "op_share": [op_shares(r["genotype"], ops) for r in read_jsonl(run.dir / GENOTYPES)]},
    }


def read_cell(cell: Cell, lay: StudyLayout) -> dict[str, Any]:
    """A cell's genotype and its scores ("acc"): the final test accuracy of each training (keyed by training seed), or
    with eval.benchmark its NAS-Bench-201 accuracy (keyed "benchmark": the test accuracy of a NATS-Bench file, the
    validation accuracy of the table), its percentile in the space (the table) and the benchmark's whole record."""
    g: Genotype | None = read_genotype(cell.source / GENOTYPE) if (cell.source / GENOTYPE).exists() else None
    results = {seed: _json(d / RESULTS) for seed, d in lay.trainings[cell.id]}
    done = {seed: r for seed, r in results.items() if r is not None}
    drawings = sorted(str(p.relative_to(lay.dir)) for p in (cell.source / "cells").glob("*.png")) if g else []
    first = next(iter(done.values()), None)
    out = {"id": cell.id, "method": cell.method, "seed": cell.seed, "genotype": str(g) if g else None,
           "genotype_json": g.to_dict() if g else None, "ops": op_counts(g) if g else None,
           "normal_param_free": list(normal_free(g)) if g else None, "dominated": dominated(g) if g else None,
           "acc": {str(s): r["final_test_acc"] for s, r in done.items()}, "percentile": None,
           "params": first["params"] if first else None, "flops": first["flops"] if first else None,
           "train_time_s": [r["wall_time_s"] for r in done.values()],
           "train_peak_mib": [r.get("peak_mib") for r in done.values()], "drawings": drawings}
    if lay.cfg.eval.benchmark:
        record = lookup_record(lay, cell)  # None when missing, or a stale record of another cell
        if record is not None:
            found = score(record, benchmark_data(lay.cfg))
            out.update(acc={} if found["acc"] is None else {"benchmark": found["acc"]}, percentile=found["percentile"],
                       params=found["params"], flops=found["flops"], benchmark=record)
        else:
            out["benchmark"] = None
    return out


# ---------------------------------------------------------------------------------------------- figures

def summarize(name: str, cells: list[dict[str, Any]], searches: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the method table: its trainings, cells and searches."""
    accs = [a for c in cells for a in c["acc"].values()]
    found = [c for c in cells if c["ops"] is not None]
    done = [s for s in searches if s["done"]]
    return {
        "method": name, "searches": len(searches), "searches_done": len(done), "cells": len(found),
        "acc": stats(accs),
        "params": _mean([c["params"] for c in cells if c["params"] is not None]),
        "flops": _mean([c["flops"] for c in cells if c["flops"] is not None]),
        "search_time_s": _mean([t for s in done if (t := s["wall_s"] or s["time_s"]) is not None]),
        "search_cpu_s": _mean([s["cpu_s"] for s in done if s["cpu_s"] is not None]),
        "search_peak_mib": _mean([s["peak_mib"] for s in done if s["peak_mib"] is not None]),
        "supernet_valid_acc": stats([s["supernet_valid_acc"] for s in done if s["supernet_valid_acc"] is not None]),
        "edges": _mean([c["ops"]["edges"] for c in found]),
        "parameter_free": _mean([c["ops"]["parameter_free"] for c in found]),
        "skip_connect": _mean([c["ops"]["skip_connect"] for c in found]),
    }


def compare(a: dict[str, Any], b: dict[str, Any], unit: str = "finished training") -> dict[str, Any]:
    """Whether a's and b's accuracies differ by more than the spread across seeds of either; ``unit`` is what gives
    one accuracy (a finished training, or a cell with a benchmark record)."""
    sa, sb = a["acc"], b["acc"]
    out = {"a": a["method"], "b": b["method"], "difference": None, "spread": None, "verdict": "missing"}
    if not sa["n"] or not sb["n"]:
        out["text"] = f"{a['method']} vs {b['method']}: not compared (no {unit} on one side)"
        return out
    diff = sa["mean"] - sb["mean"]
    spread = max(sa["std"], sb["std"])
    out.update(difference=diff, spread=spread)
    head = f"{a['method']} {sa['mean']:.2f}% vs {b['method']} {sb['mean']:.2f}% (n={sa['n']} and {sb['n']}):"
    if sa["n"] < 2 or sb["n"] < 2:
        out["verdict"] = "no_spread"
        out["text"] = f"{head} a difference of {diff:+.2f} points, but one side has a single {unit}, so there is " \
                      "no spread to judge it against; add seeds"
    elif abs(diff) <= spread:
        out["verdict"] = "within_spread"
        out["text"] = f"{head} the difference ({diff:+.2f} points) is within the spread across seeds " \
                      f"(std up to {spread:.2f}): no winner"
    else:
        hi, lo = (a, b) if diff > 0 else (b, a)
        out["verdict"] = "higher" if diff > 0 else "lower"
        out["text"] = f"{head} {hi['method']} is higher by {abs(diff):.2f} points, more than the spread across " \
                      f"seeds (std up to {spread:.2f})"
    return out


# ---------------------------------------------------------------------------------------------- the report

def write_report(lay: StudyLayout, failures: dict[str, str]) -> Path:
    """Write report.md, report.json and plots/ in the study directory from what its runs have recorded."""
    from nas.space.spaces import get_space

    cfg = lay.cfg
    ops = cfg.model.ops or get_space(cfg.model.space).ops
    searches = [read_search(r, ops) for r in lay.searches]
    cells = [read_cell(c, lay) for c in lay.cells]
    rows = [summarize(m, [c for c in cells if c["method"] == m], [s for s in searches if s["method"] == m])
            for m in cfg.methods]
    random_row = summarize("random", [c for c in cells if c["method"] == "random"], [])
    unit = "cell with a benchmark record" if cfg.eval.benchmark else "finished training"
    comparisons = [compare(a, b, unit) for i, a in enumerate(rows) for b in rows[i + 1:]]
    if cfg.random.samples:
        comparisons += [compare(r, random_row, unit) for r in rows]
    unfinished = _unfinished(lay, failures, cells)
    scoring = _scoring(lay, cells)
    report: dict[str, Any] = {"study": str(lay.dir), "scoring": scoring,
              "budget": _budget(lay, searches, cells), "machine": _machine(lay),
              "methods": rows, "random": random_row if cfg.random.samples else None, "comparisons": comparisons,
              "cells": cells, "searches": searches, "unfinished": unfinished, "config": to_dict(cfg)}
    budgets = {m: method_options(cfg, m).budget for m in cfg.methods}
    report["budgets"] = {m: b.target for m, b in budgets.items() if b.metric == "params"}  # parameter budgets
    if scoring["by"] == "benchmark":
        report["quality"] = quality([*rows, *([random_row] if cfg.random.samples else [])], cells,
                                    _json(lay.dir / "bench" / BASELINES))
    from nas.study.plots import draw_plots

    report["plots"] = [str(p.relative_to(lay.dir)) for p in draw_plots(lay.dir / "plots", report, ops)]
    atomic_write_text(lay.dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write_text(lay.dir / REPORT_MD, markdown(report))
    return lay.dir / REPORT_MD


def _unfinished(lay: StudyLayout, failures: dict[str, str], cells: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every run and lookup of the study that is not done, and why: failed, interrupted, waiting or not started."""
    out = []
    runs: list[tuple[str, Path, Path | None]] = [("search", r.dir, None) for r in lay.searches]
    runs += [("train", d, c.source) for c in lay.cells for _, d in lay.trainings[c.id]]
    for kind, d, source in runs:
        state = run_state(d, kind)
        if state == "done":
            continue
        name = f"{kind}/{d.name}"
        if name in failures:
            why = f"failed: {failures[name]}"
        elif state == "interrupted":
            why = "interrupted (resumes from its checkpoint)"
        elif source is not None and not (source / GENOTYPE).exists():
            why = f"waits for its cell ({source.relative_to(lay.dir)} has no {GENOTYPE})"
        else:
            why = "not started"
        out.append({"run": name, "state": why})
    if lay.cfg.eval.benchmark:
        for cell, c in zip(lay.cells, cells, strict=True):
            name = f"bench/{cell.id}"
            if c["genotype"] is None:
                why = f"waits for its cell ({cell.source.relative_to(lay.dir)} has no {GENOTYPE})"
            elif name in failures:
                why = f"not looked up: {failures[name]}"
            elif c["benchmark"] is None:
                why = "not looked up yet (compare.py --resume or --report looks it up)"
            else:
                continue
            out.append({"run": name, "state": why})
    return out


def _scoring(lay: StudyLayout, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """How the report scores a cell: by retraining it, or by its NAS-Bench-201 record (eval.benchmark): which
    benchmark, data set, recipe and split (the table has validation accuracies only)."""
    cfg = lay.cfg
    if not cfg.eval.benchmark:
        return {"by": "training"}
    records = [c["benchmark"] for c in cells if c.get("benchmark")]
    return {"by": "benchmark", "benchmark": cfg.eval.benchmark, "data": benchmark_data(cfg),
            "recipes": sorted({recipe(r) for r in records}), "split": sorted({split_of(r) for r in records}),
            "space": _json(lay.dir / "bench" / SPACE)}


def _per_data(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Benchmark records' accuracy and percentile statistics on each of the benchmark's three data sets."""
    per_data = {}
    for d in DATASETS:
        accs = [r[recipe(r)][d][split_of(r)] for r in records]
        pcts = [r["percentile"][d] for r in records if "percentile" in r]
        per_data[d] = {"acc": stats([a for a in accs if a is not None]), "percentile": stats(pcts)}
    return per_data


def quality(rows: list[dict[str, Any]], cells: list[dict[str, Any]], baselines: dict[str, Any] | None = None
            ) -> list[dict[str, Any]]:
    """Per method (and the random cells): its cells' NAS-Bench-201 accuracy and percentile on each of the
    benchmark's three data sets (the data searched and the transfer ones), and its CPU time per search; then the
    baselines (bench/baselines.json): the ResNet cell and the convolution-only cells."""
    out = []
    for row in rows:
        records = [c["benchmark"] for c in cells if c["method"] == row["method"] and c.get("benchmark")]
        out.append({"method": row["method"], "cells": len(records), "cpu_s": row.get("search_cpu_s"),
                    "data": _per_data(records)})
    if baselines and baselines.get("resnet"):
        out.append({"method": "resnet", "baseline": True, "label": "the ResNet cell", "cells": 1, "cpu_s": None,
                    "data": _per_data([baselines["resnet"]])})
    if baselines and baselines.get("convolution_only"):
        conv = baselines["convolution_only"]
        out.append({"method": "convolution-only", "baseline": True, "cpu_s": None, "cells": len(conv),
                    "label": f"convolution-only cells ({'all ' * (len(conv) == 64)}{len(conv)})",
                    "data": _per_data(conv)})
    return out


def _budget(lay: StudyLayout, searches: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = lay.cfg
    search_data = next((_json(r.dir / META).get("data") for r in lay.searches
                        if (r.dir / META).exists()), None) or {}
    train_data = next((_json(d / META).get("data") for ts in lay.trainings.values() for _, d in ts
                       if (d / META).exists()), None) or {}
    return {
        "data": cfg.data.name, "classes": search_data.get("classes") or train_data.get("classes"),
        "image_shape": search_data.get("image_shape") or train_data.get("image_shape"),
        "weight_images": search_data.get("weight_images"), "alpha_images": search_data.get("alpha_images"),
        "train_images": train_data.get("train_images"), "test_images": train_data.get("test_images"),
        "supernet": {"space": cfg.model.space, "C": cfg.model.C, "layers": cfg.model.layers},
        "search_epochs": cfg.search.epochs, "search_batch": cfg.data.batch_size, "search_seeds": list(cfg.seeds),
        "per_method": {m: keys for m, keys in cfg.per_method.items() if m in cfg.methods},  # of the methods run
        "eval": {"C": cfg.eval.model.C, "layers": cfg.eval.model.layers, "epochs": cfg.eval.train.epochs,
                 "batch": cfg.eval.data.batch_size, "seeds": list(cfg.eval.seeds)},
        "random_cells": cfg.random.samples,
        "search_time_s": sum(s["wall_s"] or s["time_s"] or 0.0 for s in searches),
        "search_cpu_s": sum(s["cpu_s"] or 0.0 for s in searches),
        "train_time_s": sum(t for c in cells for t in c["train_time_s"]),
    }


def _machine(lay: StudyLayout) -> dict[str, Any]:
    """Where the runs ran, from their meta.json: hosts, processors, devices, threads, versions."""
    sessions: list[dict[str, Any]] = []
    for d in [r.dir for r in lay.searches] + [d for ts in lay.trainings.values() for _, d in ts]:
        meta = _json(d / META)
        sessions += meta["sessions"] if meta else []
    if not sessions:
        return {}

    def distinct(key: Any) -> list[Any]:
        return sorted({json.dumps(key(s), sort_keys=True) for s in sessions})

    return {"hosts": [json.loads(x) for x in distinct(lambda s: s["host"])],
            "cpu": [json.loads(x) for x in distinct(lambda s: s.get("cpu"))],
            "devices": [json.loads(x) for x in distinct(lambda s: s["device"])],
            "threads": [json.loads(x) for x in distinct(lambda s: s["threads"])],
            "torch": [json.loads(x) for x in distinct(lambda s: s["versions"]["torch"])]}
