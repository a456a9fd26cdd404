"""GDAS and DARTS as the compute grows: the study configs/compare/nb201-compute.yaml run at several budget points
(images per search, GDAS epochs, DARTS epochs), every found cell scored by NAS-Bench-201's table; prints each point's
percentile and CPU-minutes per search, and draws percentile against CPU-minutes.

    python benchmarks/compute_curve.py --data ~/cifar10-images --out runs/compute-curve --jobs 2

Each point is a study of its own under OUT (n<images>-g<gdas epochs>-d<darts epochs>, "-nobn" with the search's
BatchNorm keeping no running statistics); a stopped run continues where it stopped when the same command is run
again, and --report-only redraws the table and the plot from what has finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from nas.bench201 import ordinal
from nas.cli import run_guarded

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "compare" / "nb201-compute.yaml"
POINTS = "5000:50:10,10000:50:10,10000:100:20,20000:100:20,25000:150:20"
METHODS = ("gdas", "darts")


def point_dir(out: Path, point: tuple[int, int, int], bn: bool) -> Path:
    n, g, d = point
    return out / (f"n{n}-g{g}-d{d}" + ("" if bn else "-nobn"))


def run_point(out: Path, point: tuple[int, int, int], bn: bool, data: str, jobs: int, seeds: str) -> None:
    from nas.study.plan import load_plan
    from nas.study.run import run_study

    study = point_dir(out, point, bn)
    if (study / "study.yaml").exists():
        run_study(resume=study, jobs=jobs)
        return
    n, g, d = point
    overrides = [f"data.root={data}", f"data.subset={n}", f"per_method.gdas.epochs={g}",
                 f"per_method.darts.epochs={d}", f"seeds=[{seeds}]", f"model.bn_stats={str(bn).lower()}",
                 f"run.dir={study}"]
    run_study(load_plan(str(CONFIG), overrides), "nb201-compute", jobs=jobs)


def alpha_end(search_dir: Path) -> Any:
    """softmax(alpha) of the normal cell at the search's end, (edges, ops), from the last line of alpha.jsonl; None
    where the run wrote none."""
    path = search_dir / "alpha.jsonl"
    if not path.exists() or not path.read_text().strip():
        return None
    import torch

    last = json.loads(path.read_text().strip().splitlines()[-1])
    return torch.tensor(last["normal"]).softmax(-1)


def alpha_top(search_dir: Path) -> float | None:
    """How far alpha moved from uniform by the search's end: the mean over edges of the largest softmax(alpha)
    weight (0.2 for NAS-Bench-201's five ops at the start)."""
    w = alpha_end(search_dir)
    return None if w is None else float(w.max(-1).values.mean())


def alpha_per_op(search_dirs: list[Path], ops: tuple[str, ...]) -> dict[str, float] | None:
    """Where alpha moved: each op's softmax weight at the end, averaged over edges and searches."""
    ends = [w for d in search_dirs if (w := alpha_end(d)) is not None and w.shape[-1] == len(ops)]
    if not ends:
        return None
    mean = sum(w.mean(0) for w in ends) / len(ends)
    return {op: round(float(v), 3) for op, v in zip(ops, mean, strict=True)}


def study_rows(study: Path, images: int | None = None, epochs: dict[str, int] | None = None,
               bn: bool = True) -> list[dict[str, Any]]:
    """One row per method of a finished study: percentile and accuracy of its cells, CPU-minutes, skips,
    parameter-free edges and how far alpha moved."""
    path = study / "report.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    quality = {q["method"]: q for q in report.get("quality", [])}
    config = report.get("config") or {}
    per_method = config.get("per_method") or {}
    from nas.space.spaces import get_space

    ops = get_space((config.get("model") or {}).get("space", "nb201")).ops
    rows = []
    for m in dict.fromkeys(c["method"] for c in report["cells"]):
        cells = [c for c in report["cells"] if c["method"] == m and c.get("benchmark")]
        if not cells:
            continue
        pcts = [c["benchmark"]["percentile"]["cifar10"] for c in cells]
        accs = [c["benchmark"]["200"]["cifar10"]["valid"] for c in cells]
        tops = [t for c in cells if (t := alpha_top(study / "search" / c["id"])) is not None]
        by_op = alpha_per_op([study / "search" / c["id"] for c in cells], ops)
        rows.append({"method": m, "images": images if images is not None else (config.get("data") or {}).get("subset"),
                     "epochs": (epochs or {}).get(m, (per_method.get(m) or {}).get(
                         "epochs", (config.get("search") or {}).get("epochs"))), "bn_stats": bn, "cells": len(cells),
                     "cpu_min": (quality[m]["cpu_s"] or 0) / 60 if m in quality else None,
                     "pct_mean": statistics.fmean(pcts), "pct_min": min(pcts), "pct_max": max(pcts),
                     "acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "skips": statistics.fmean(c["ops"]["skip_connect"] for c in cells),
                     "param_free": statistics.fmean(c["ops"]["parameter_free"] for c in cells),
                     "alpha_top": statistics.fmean(tops) if tops else None, "alpha_per_op": by_op,
                     "genotypes": [c["genotype"] for c in cells]})
    return rows


def read_point(out: Path, point: tuple[int, int, int], bn: bool) -> list[dict[str, Any]]:
    """The rows of one finished point of the curve (GDAS and DARTS as published)."""
    n, g, d = point
    return [r for r in study_rows(point_dir(out, point, bn), n, {"gdas": g, "darts": d}, bn) if r["method"] in METHODS]


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| method | images | epochs | BN running stats | cells | CPU-min per search | CIFAR-10 valid acc % | "
          "CIFAR-10 percentile (min, max) | skips per cell | parameter-free edges per cell | alpha's top weight | "
          "alpha's mean weight per op |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = "" if r["cpu_min"] is None else f"{r['cpu_min']:.1f}"
        print(f"| {r['method']} | {r['images']} | {r['epochs'] if r['epochs'] is not None else ''} | "
              f"{'yes' if r['bn_stats'] else 'no'} | {r['cells']} | {cpu} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | "
              f"{ordinal(r['pct_mean'])} ({ordinal(r['pct_min'])}, {ordinal(r['pct_max'])}) | {r['skips']:.1f} | "
              f"{r['param_free']:.1f} | " + (f"{r['alpha_top']:.2f} |" if r.get("alpha_top") is not None else " |")
              + (" " + ", ".join(f"{op} {w:.2f}" for op, w in r["alpha_per_op"].items()) + " |"
                 if r.get("alpha_per_op") else " |"))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    fixed = {"gdas": "tab:blue", "darts": "tab:orange"}
    others = iter(["tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:grey"])
    for m in dict.fromkeys(r["method"] for r in rows):
        colour = fixed.get(m) or next(others, "black")
        for bn in (True, False):
            pts = sorted((r for r in rows if r["method"] == m and r["bn_stats"] == bn), key=lambda r: r["cpu_min"])
            if not pts:
                continue
            x = [r["cpu_min"] for r in pts]
            y = [r["pct_mean"] for r in pts]
            err = [[max(0.0, r["pct_mean"] - r["pct_min"]) for r in pts],  # rounded records may cross by a point
                   [max(0.0, r["pct_max"] - r["pct_mean"]) for r in pts]]
            ax.errorbar(x, y, yerr=err, color=colour, marker="o" if bn else "s", capsize=3,
                        linestyle="-" if bn else "none", mfc=colour if bn else "none",
                        label=m + ("" if bn else " (BatchNorm without running statistics)"))
    ax.set_xscale("log")
    edge = ax.get_yaxis_transform()  # x in axes fractions, y in data units
    for level, label in ((50, "median cell"), (90, "90th percentile")):
        ax.axhline(level, color="grey", linewidth=0.8, linestyle=":")
        ax.text(0.01, level + 1, label, color="grey", fontsize=8, transform=edge)
    ax.axhline(98.5, color="tab:green", linewidth=0.8, linestyle="--")
    ax.text(0.01, 95.5, "the ResNet cell (98.5th)", color="tab:green", fontsize=8, transform=edge)
    ax.set_xlabel("CPU-minutes per search (one thread)")
    ax.set_ylabel("CIFAR-10 percentile in NAS-Bench-201\n(mean, min-max)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("GDAS and DARTS as the compute grows", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["method"], row["images"], row["epochs"], row["bn_stats"]


def merge(record: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record with the rows measured now in place of the record's rows of the same method, images, epochs and
    BatchNorm setting."""
    fresh = {row_key(r): r for r in rows}
    kept = [r for r in record if row_key(r) not in fresh]
    return kept + list(fresh.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="", help="the CIFAR-10 image folder (DIR/train/<class>/...)")
    p.add_argument("--out", required=True, help="folder of the studies, one per point")
    p.add_argument("--points", default=POINTS, help="comma-separated IMAGES:GDAS_EPOCHS:DARTS_EPOCHS")
    p.add_argument("--bn-points", default="5000:50:10", help="the points also run with model.bn_stats=false")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="run nothing: the table and plot of what finished")
    p.add_argument("--study", action="append", default=[], metavar="DIR",
                   help="a finished study run by hand (compare.py), every method of it a series of its own "
                        "(for instance configs/compare/gdas-schedule.yaml); repeat for several")
    p.add_argument("--record", default="", metavar="JSON",
                   help="rows measured earlier, kept in this file: the rows measured now replace theirs and the "
                        "table and plot show them all")
    p.add_argument("--plot", default="", help="where the plot goes (default OUT/compute-curve.png)")
    args = p.parse_args(argv)
    out = Path(args.out)

    def parse(text: str) -> list[tuple[int, int, int]]:
        return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]  # type: ignore[misc]

    todo = [(pt, True) for pt in parse(args.points)] + [(pt, False) for pt in parse(args.bn_points)]
    for study in args.study:
        if not (Path(study) / "report.json").exists():
            raise SystemExit(f"error: --study {study}: no report.json there (run python compare.py --report {study})")

    def go() -> None:
        if not args.report_only:
            if not args.data:
                raise SystemExit("error: --data is needed to run the studies (or give --report-only)")
            for pt, bn in todo:
                run_point(out, pt, bn, args.data, args.jobs, args.seeds)

    if not args.report_only:
        code = run_guarded(go)
        if code:
            return code
    rows = [r for pt, bn in todo for r in read_point(out, pt, bn)]
    rows += [r for study in args.study for r in study_rows(Path(study))]
    if args.record:
        record = Path(args.record)
        rows = merge(json.loads(record.read_text()) if record.exists() else [], rows)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(rows, indent=1) + "\n")
    order = {m: i for i, m in enumerate(METHODS)}
    print_table(sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["method"], not r["bn_stats"],
                                            r["cpu_min"] or 0)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        plot(rows, Path(args.plot) if args.plot else out / "compute-curve.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
