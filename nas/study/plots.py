"""The plots of a comparison study's report (matplotlib, PNG), drawn from report.json's figures: test accuracy per
method beside the random cells, supernet validation accuracy per epoch and per second, how decided alpha is, the
share of each op in the derived genotype per epoch, and the cost of each search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RANDOM_COLOR = "0.55"


def _figure(width: float, height: float, cols: int = 1, rows: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _colors(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)} | {"random": RANDOM_COLOR}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def draw_plots(out_dir: Path, report: dict[str, Any], ops: tuple[str, ...]) -> list[Path]:
    """Every plot for which something has finished; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = [r["method"] for r in report["methods"]]
    colors = _colors(methods)
    searches = [s for s in report["searches"] if s["epochs"]]
    paths = []
    if any(c["acc"] for c in report["cells"]):
        paths.append(accuracy_plot(out_dir / "accuracy.png", report, methods, colors))
    if any(c["acc"] and c.get("params") for c in report["cells"]):
        paths.append(accuracy_cost_plot(out_dir / "accuracy_cost.png", report, methods, colors))
    if searches:
        paths.append(supernet_plot(out_dir / "supernet_valid.png", searches, colors))
    learned = [s for s in searches if s["curve"]["op_share"]]  # random search learns no alpha and logs none
    if learned:
        paths.append(alpha_plot(out_dir / "alpha_decided.png", learned, colors, len(ops)))
        paths.append(op_share_plot(out_dir / "op_share.png", learned, methods, ops))
    if any(s["done"] for s in searches):
        paths.append(cost_plot(out_dir / "search_cost.png", [s for s in searches if s["done"]], methods, colors))
    return paths


def accuracy_plot(path: Path, report: dict[str, Any], methods: list[str], colors: dict[str, Any]) -> Path:
    """Every training's final test accuracy per method (points), mean ± std (bar), and the random cells' spread."""
    groups = [*methods, *(["random"] if report["random"] else [])]
    fig, axes = _figure(1.6 + 1.3 * len(groups), 4.0)
    ax: Axes = axes[0, 0]
    rng = np.random.default_rng(0)  # jitter only
    for i, g in enumerate(groups):
        accs = [a for c in report["cells"] if c["method"] == g for a in c["acc"].values()]
        if not accs:
            continue
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(accs)), accs, s=22, color=colors[g], alpha=0.8, zorder=3)
        if g == "random":
            ax.boxplot(accs, positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"})
        else:
            ax.errorbar(i + 0.25, float(np.mean(accs)), yerr=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        fmt="D", color="black", capsize=4, zorder=4)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    bench = report["scoring"]["by"] == "benchmark"
    ax.set_ylabel("benchmark test accuracy (%)" if bench else "final test accuracy (%)")
    ax.set_title("looked up in NAS-Bench-201: one point per cell" if bench
                 else "retrained from scratch: one point per training", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def accuracy_cost_plot(path: Path, report: dict[str, Any], methods: list[str], colors: dict[str, Any]) -> Path:
    """Every cell's accuracy (mean over its trainings, or its benchmark record) against its parameters: the
    methods' cells and the random cells on one plane, with each budgeted method's target as a dashed line."""
    fig, axes = _figure(6.4, 4.4)
    ax: Axes = axes[0, 0]
    for g in [*methods, "random"]:
        cells = [c for c in report["cells"] if c["method"] == g and c["acc"] and c.get("params")]
        if cells:
            ax.scatter([c["params"] / 1e6 for c in cells], [float(np.mean(list(c["acc"].values()))) for c in cells],
                       s=28 if g != "random" else 18, color=colors.get(g, "grey"), alpha=0.85, label=g, zorder=3,
                       marker="o" if g != "random" else "x")
    for g, target in (report.get("budgets") or {}).items():
        ax.axvline(target, color=colors.get(g, "grey"), linestyle="--", alpha=0.6)
    bench = report["scoring"]["by"] == "benchmark"
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("benchmark accuracy (%)" if bench else "final test accuracy (%)")
    ax.set_title("accuracy against size: one point per cell (dashed: a method's parameter budget)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _legend_once(ax: Axes, searches: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    from matplotlib.lines import Line2D

    seen = list(dict.fromkeys(s["method"] for s in searches))
    ax.legend([Line2D([], [], color=colors[m]) for m in seen], seen, fontsize=8)


def supernet_plot(path: Path, searches: list[dict[str, Any]], colors: dict[str, Any]) -> Path:
    """Supernet validation accuracy (the alpha-step batches) per epoch and per second of search."""
    fig, axes = _figure(10.0, 3.8, cols=2)
    for s in searches:
        c = s["curve"]
        axes[0, 0].plot(c["epoch"], c["valid_acc"], color=colors[s["method"]], alpha=0.85)
        axes[0, 1].plot(c["seconds"], c["valid_acc"], color=colors[s["method"]], alpha=0.85)
    for ax, xlabel in zip(axes[0], ("epoch", "search wall-clock (s)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("supernet valid accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_once(axes[0, 0], searches, colors)
    axes[0, 0].set_title("one line per search", fontsize=10)
    return _save(fig, path)


def alpha_plot(path: Path, searches: list[dict[str, Any]], colors: dict[str, Any], num_ops: int) -> Path:
    """The largest softmax(alpha) per edge, averaged: 1/K when undecided, 1 when every edge has chosen."""
    fig, axes = _figure(5.5, 3.8)
    ax: Axes = axes[0, 0]
    for s in searches:
        c = s["curve"]
        ax.plot(c["epoch"][:len(c["alpha_decided"])], c["alpha_decided"], color=colors[s["method"]], alpha=0.85)
    ax.axhline(1 / num_ops, color="0.6", ls="--", lw=0.8)
    ax.text(ax.get_xlim()[0], 1 / num_ops, " uniform", va="bottom", fontsize=7, color="0.4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean over edges of max softmax(alpha)")
    ax.set_title("how decided each search is", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_once(ax, searches, colors)
    return _save(fig, path)


def op_share_plot(path: Path, searches: list[dict[str, Any]], methods: list[str], ops: tuple[str, ...]) -> Path:
    """Per method (rows) and cell type (columns): each op's share of the derived genotype's edges per epoch,
    averaged over the method's seeds."""
    from matplotlib import colormaps

    cell_types = [t for t in ("normal", "reduce") if any(t in e for s in searches for e in s["curve"]["op_share"])]
    shown = [m for m in methods if any(s["method"] == m for s in searches)]
    fig, axes = _figure(4.6 * len(cell_types) + 1.6, 2.6 * len(shown), cols=len(cell_types), rows=len(shown))
    cmap = colormaps["tab10"]
    for i, m in enumerate(shown):
        runs = [s["curve"]["op_share"] for s in searches if s["method"] == m]
        epochs = min(len(r) for r in runs)
        for j, t in enumerate(cell_types):
            ax: Axes = axes[i, j]
            for k, op in enumerate(ops):
                share = np.mean([[r[e][t][op] for e in range(epochs)] for r in runs], axis=0)
                ax.plot(range(1, epochs + 1), share, color=cmap(k % 10), label=op,
                        ls="--" if op in ("none", "skip_connect") else "-")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{m}: {t} cell", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel("share of edges", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def cost_plot(path: Path, searches: list[dict[str, Any]], methods: list[str], colors: dict[str, Any]) -> Path:
    """Search wall-clock and peak memory per method: bars at the mean, one point per search."""
    shown = [m for m in methods if any(s["method"] == m for s in searches)]
    fig, axes = _figure(3.0 + 1.8 * len(shown), 3.6, cols=2)
    for ax, key, label in ((axes[0, 0], "time_s", "search wall-clock (s)"),
                           (axes[0, 1], "peak_mib", "peak memory (MiB)")):
        for i, m in enumerate(shown):
            values = [s[key] for s in searches if s["method"] == m and s[key] is not None]
            ax.bar(i, float(np.mean(values)), color=colors[m], alpha=0.6, width=0.6)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
