"""report.md: the markdown page of a comparison study, written from report.json's figures alone (nas/study/report.py
gathers them), so the page can be re-rendered without reading a run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nas.bench201 import BENCH_DATA, LABELS, ordinal, recipe, split_of
from nas.searching.collapse import WHY
from nas.text import count


def _f(x: float | None, fmt: str = ".2f", unit: str = "") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}{unit}"


def _acc(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "–"
    return f"{s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})"


def _mega(x: float | None, fmt: str) -> str:
    return _f(None if x is None else x / 1e6, fmt, "M")


def _method_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one row of the method table (the random baseline has no search columns)."""
    acc, s = row["acc"], row["supernet_valid_acc"]
    free = f"{_f(row['parameter_free'], '.1f')} / {_f(row['edges'], '.0f')}"
    common = [_mega(row["params"], ".3f"), _mega(row["flops"], ".1f")]
    if row["method"] == "random":
        median = f", median {acc['median']:.2f}, range {acc['min']:.2f}–{acc['max']:.2f}" if acc["n"] else ""
        return [f"random ({count(row['cells'], 'cell')})", _acc(acc) + median, *common, "", "", "", free,
                _f(row["skip_connect"], ".1f")]
    valid = _f(s["mean"]) + (f" ± {s['std']:.2f}" if s["n"] > 1 else "")
    return [row["method"], _acc(acc), *common, _f(row["search_time_s"], ".0f", " s"),
            _f(row["search_peak_mib"], ".0f", " MiB"), valid, free, _f(row["skip_connect"], ".1f")]


def _metric(scoring: dict[str, Any], data: str | None = None) -> str:
    """What scores a cell, in words: "CIFAR-10 validation accuracy" or "CIFAR-10 test accuracy"."""
    split = "validation" if scoring.get("split") == ["valid"] else "test" if scoring.get("split") == ["test"] \
        else "test or validation"
    return f"{LABELS[data or scoring['data']]} {split} accuracy"


def _scoring_line(scoring: dict[str, Any], b: dict[str, Any]) -> str:
    """The budget's line on how a cell is scored: the retraining recipe, or the benchmark lookup."""
    if scoring["by"] == "benchmark":
        epochs = " or ".join(scoring["recipes"]) or "200"
        lacks = " (the table holds no test accuracy)" if scoring.get("split") == ["valid"] else ""
        return (f"- scoring: **no cell was retrained**; each was looked up in NAS-Bench-201 ({scoring['benchmark']}) "
                f"and scored by its {_metric(scoring)} after the benchmark's {epochs}-epoch training, averaged over "
                f"the benchmark's seeds{lacks}")
    return (f"- retraining (one recipe for every cell): C={b['eval']['C']}, layers={b['eval']['layers']}, "
            f"{count(b['eval']['epochs'], 'epoch')}, batch {b['eval']['batch']}, seeds {b['eval']['seeds']}; the "
            "accuracy of a training is its last epoch's on the test split")


def _other_benchmark_tests(record: dict[str, Any], data: str) -> str:
    """The cell's benchmark accuracy on the data sets other than the one that scores it."""
    hp, split = recipe(record), split_of(record)
    others = [(d, record[hp][BENCH_DATA[d]][split]) for d in LABELS if d != data]
    return " (" + ", ".join(f"{LABELS[d]} {_f(a)}" for d, a in others) + ")"


def _pct(s: dict[str, Any]) -> str:
    return "–" if not s["n"] else f"{ordinal(s['mean'])} (min {ordinal(s['min'])})"


def quality_table(r: dict[str, Any]) -> list[str]:
    """The markdown of the search-quality table: per method, mean ± std accuracy and mean (min) percentile on each
    data set, CPU time per search; then the whole space's distribution, where the table gave it."""
    space = r["scoring"].get("space")
    split = "valid" if r["scoring"].get("split") == ["valid"] else "test"
    head = ["method", "cells"] + [f"{LABELS[d]} {split} acc %" for d in LABELS]
    keys = list(BENCH_DATA.values())
    if space:
        head = head[:2] + [x for h, d in zip(head[2:], LABELS, strict=True) for x in (h, f"{LABELS[d]} percentile")]
    lines = ["| " + " | ".join([*head, "CPU-min per search"]) + " |", "|" + "---|" * (len(head) + 1)]
    for q in r["quality"]:
        name = "random cells" if q["method"] == "random" else q.get("label", q["method"])
        row = [name, str(q["cells"])]
        for k in keys:
            acc = q["data"][k]["acc"]
            row.append("–" if not acc["n"] else f"{acc['mean']:.2f} ± {acc['std']:.2f}")
            if space:
                row.append(_pct(q["data"][k]["percentile"]))
        search = q["method"] != "random" and not q.get("baseline")
        cpu = _f(None if q["cpu_s"] is None else q["cpu_s"] / 60, ".1f") if search else ""
        lines.append("| " + " | ".join([*row, cpu]) + " |")
    if space:
        for what, key, pct in (("median", "median", "50th"), ("90th percentile", "p90", "90th"),
                               ("99th percentile", "p99", "99th"), ("best", "best", "100th")):
            row = [f"the space: {what}", str(space[keys[0]]["cells"])]
            for k in keys:
                row += [f"{space[k][key]:.2f}", pct]
            lines.append("| " + " | ".join([*row, ""]) + " |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    b, m = r["budget"], r["machine"]
    lines = [f"# Comparison study: {r['study']}", ""]
    imgs = f"{b['weight_images']} weight + {b['alpha_images']} alpha images" if b["weight_images"] else "images: –"
    bench = r["scoring"]["by"] == "benchmark"
    retraining = "" if bench else f"; retraining: {b['train_images']} training and {b['test_images']} test images"
    lines += [
        "## Budget", "",
        f"- data: {b['data']}, {b['classes']} classes, images {b['image_shape']}; search: {imgs}{retraining}",
        f"- search: {b['supernet']['space']} supernet, C={b['supernet']['C']}, layers={b['supernet']['layers']}, "
        f"{count(b['search_epochs'], 'epoch')}, batch {b['search_batch']}, seeds {b['search_seeds']}"
        + (f"; per method: {json.dumps(b['per_method'])}" if b["per_method"] else ""),
        _scoring_line(r["scoring"], b),
        f"- random baseline: {count(b['random_cells'], 'cell')}",
        f"- compute: {b['search_time_s'] / 60:.1f} min of search ({b['search_cpu_s'] / 60:.1f} CPU-min), "
        f"{b['train_time_s'] / 60:.1f} min of training",
    ]
    if m:
        cpu = "; ".join(f"{c['model']} ({c['cores']} cores)" for c in m["cpu"] if c) or "–"
        dev = ", ".join(d.get("name", d["type"]) for d in m["devices"])
        lines.append(f"- machine: {', '.join(m['hosts'])}; {cpu}; device {dev}; torch threads "
                     f"{', '.join(map(str, m['threads']))}; torch {', '.join(m['torch'])}")
    split = "valid" if bench and r["scoring"]["split"] == ["valid"] else "test"
    what = f"NAS-Bench-201 {_metric(r['scoring'])}: mean ± sample std over the method's cells (one per search seed), " \
        "as the benchmark records them, params and FLOPs too" if bench else \
        "Test accuracy: mean ± sample std over every training of the method's cells (search seeds × training seeds)"
    lines += ["", "## Methods", "",
              f"{what}. Search figures are means over the finished searches; peak memory is the process's high-water "
              "mark (RSS on a CPU, allocated tensors on a GPU). Edges: parameter-free (none, skip, pooling) / all "
              "kept edges of the genotype, and skip-connects.", "",
              f"| method | {'benchmark ' if bench else ''}{split} acc % | params | FLOPs | search time | search peak "
              "mem | supernet valid acc % | param-free / edges | skip |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in [*r["methods"], *([r["random"]] if r["random"] else [])]:
        lines.append("| " + " | ".join(_method_cells(row)) + " |")
    if "quality" in r:
        space = "; the last rows are the whole space of the benchmark's cells, exactly" if r["scoring"].get("space") \
            else ""
        lines += ["", "## Search quality against NAS-Bench-201", "",
                  "Each method's cells as NAS-Bench-201 records them: mean ± sample std over its cells (one per "
                  "search seed) on the data set searched and on the other two (transfer), their mean percentile among "
                  "the space's cells (and the lowest), and CPU time per search (every thread of the search's process, "
                  f"from start to genotype){space}.", "", *quality_table(r)]
    lines += ["", "## What the numbers say", "",
              "A difference is called one only when it is larger than the sample std across seeds of either side. "
              "That is a rule of thumb, not a significance test, and with 2 or 3 seeds a weak one.", ""]
    lines += [f"- {c['text']}" for c in r["comparisons"]] or ["- nothing to compare yet"]
    warned = False
    for row in r["methods"]:
        bad = [c for c in r["cells"] if c["method"] == row["method"] and c["dominated"]]
        if bad:
            which = ", ".join(f"{c['id']} {c['normal_param_free'][0]} of {c['normal_param_free'][1]}" for c in bad)
            lines.append(f"- **warning: {row['method']}: {len(bad)} of {row['cells']} cells have a normal cell "
                         f"dominated by parameter-free edges** ({which}).")
            warned = True
    if warned:
        lines += ["", WHY]
    column = f"NAS-Bench-201 {split} acc % ({LABELS[r['scoring']['data']]}; the others)" if bench \
        else "test acc % per training seed"
    lines += ["", "## Cells", "", f"| cell | {column} | params | FLOPs | param-free / edges | genotype | drawings |",
              "|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        accs = ", ".join(f"{a:.2f}" for a in c["acc"].values()) or "–"
        if bench and c["benchmark"]:
            accs += _other_benchmark_tests(c["benchmark"], r["scoring"]["data"])
        ops = f"{c['ops']['parameter_free']} / {c['ops']['edges']}" if c["ops"] else "–"
        draw = " ".join(f"[{Path(d).stem}]({d})" for d in c["drawings"]) or "–"
        text = f"`{c['genotype']}`".replace("|", "\\|") if c["genotype"] else "not found yet"  # | splits a cell
        lines.append(f"| {c['id']} | {accs} | {_mega(c['params'], '.3f')} | {_mega(c['flops'], '.1f')} | {ops} | "
                     f"{text} | {draw} |")
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in r["plots"]]
    if r["unfinished"]:
        lines += ["", "## Not finished", ""] + [f"- {u['run']}: {u['state']}" for u in r["unfinished"]]
    return "\n".join(lines) + "\n"
