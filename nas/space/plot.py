"""Drawings: a genotype's cells as diagrams, with graphviz's ``dot`` when it is installed and matplotlib otherwise
(so drawing always works), and alpha as per-edge softmax heatmaps.

    python -m nas.space.plot <genotype.json | run dir | published name | genotype string> [--out DIR] [--engine ...]
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nas.run.runlog import Board
from nas.space.genotype import Genotype, Node
from nas.space.spaces import Space, get_space


def _layout(g: Genotype, cell: str) -> tuple[list[str], list[tuple[int, int, str]], int]:
    """(node labels, (src, dst, op) edges, output node) of one cell, nodes numbered as in the genotype: the space's
    input labels, the intermediate nodes by number, and the output, a node of its own joined by gray edges where the
    cell concatenates its nodes (DARTS), else its last node (NAS-Bench-201). `none` edges are not drawn."""
    space = get_space(g.space)
    nodes: tuple[Node, ...] = g.normal if cell == "normal" else g.reduce
    concat = g.normal_concat if cell == "normal" else g.reduce_concat
    first = space.num_inputs
    labels = [*space.input_labels, *(str(i + first) for i in range(len(nodes)))]
    edges = [(src, i + first, op) for i, node in enumerate(nodes) for op, src in node if op != "none"]
    if not space.concat_all:
        labels[-1] = space.output_label
        return labels, edges, len(labels) - 1
    labels.append(space.output_label)
    out = len(labels) - 1
    return labels, edges + [(c, out, "") for c in concat], out


def cell_dot(g: Genotype, cell: str = "normal") -> str:
    """The cell as a graphviz DOT graph, inputs on the left and the output on the right."""
    labels, edges, out = _layout(g, cell)
    lines = [f'digraph "{cell}" {{', "  rankdir=LR;", '  node [style=filled, shape=box, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=11];']
    inputs = get_space(g.space).num_inputs
    for i, label in enumerate(labels):
        color = "darkseagreen2" if i < inputs else "palegoldenrod" if i == out else "lightblue"
        lines.append(f'  n{i} [label="{label}", fillcolor={color}];')
    for src, dst, op in edges:
        lines.append(f'  n{src} -> n{dst} [label="{op}"];' if op else f"  n{src} -> n{dst} [color=gray];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cell_figure(g: Genotype, cell: str = "normal") -> Figure:
    """The cell drawn with matplotlib alone: nodes left to right, each edge labelled with its op."""
    labels, edges, out = _layout(g, cell)
    inputs = get_space(g.space).num_inputs
    n = len(labels)
    pos = {i: (0.0, 1.0 - 2.0 * i) for i in range(inputs)}
    for i in range(inputs, n):
        pos[i] = (float(i - inputs + 1), 0.6 if i % 2 else -0.6)
    pos[out] = (float(n - inputs), 0.0)
    fig = Figure(figsize=(2.2 + 1.6 * n, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(-0.6, pos[out][0] + 0.6)
    ax.set_ylim(-1.6, 1.6)
    to_display, to_data = ax.transData.transform, ax.transData.inverted().transform
    for src, dst, op in edges:
        rad = 0.25 if dst - src > 1 else 0.0
        ax.annotate("", xy=pos[dst], xytext=pos[src],
                    arrowprops=dict(arrowstyle="-|>", color="gray" if not op else "black", lw=1.0,
                                    shrinkA=14, shrinkB=14, connectionstyle=f"arc3,rad={rad}"))
        if op:  # the midpoint of matplotlib's arc3 curve (a quadratic Bezier), found in display coordinates
            (x0, y0), (x1, y1) = to_display(pos[src]), to_display(pos[dst])
            mid = ((x0 + x1) / 2 + rad / 2 * (y1 - y0), (y0 + y1) / 2 - rad / 2 * (x1 - x0))
            mx, my = to_data(mid)
            ax.text(mx, my, op, fontsize=7, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for i, label in enumerate(labels):
        color = "#c1e1c1" if i < inputs else "#eee8aa" if i == out else "#add8e6"
        ax.text(*pos[i], label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="black", lw=0.8))
    ax.set_axis_off()
    ax.set_title(f"{g.space} {cell} cell", fontsize=10)
    fig.tight_layout()
    return fig


def draw_cells(g: Genotype, out_dir: Path, engine: str = "auto", prefix: str = "") -> list[Path]:
    """Write <prefix><cell>.png and .svg for every cell of g; returns the paths. engine: auto, dot, matplotlib."""
    if engine not in ("auto", "dot", "matplotlib"):
        raise ValueError(f"engine must be auto, dot or matplotlib, not {engine!r}")
    dot = shutil.which("dot")
    if engine == "dot" and dot is None:
        raise FileNotFoundError("graphviz's dot program is not installed (Debian: apt-get install graphviz)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell in g.cells():
        for fmt in ("png", "svg"):
            path = out_dir / f"{prefix}{cell}.{fmt}"
            if dot is not None and engine != "matplotlib":
                subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=cell_dot(g, cell), text=True, check=True,
                               capture_output=True, timeout=60)
            else:
                cell_figure(g, cell).savefig(path, dpi=110)
            paths.append(path)
    return paths


def alpha_figure(alpha: torch.Tensor, space: Space, title: str) -> Figure:
    """softmax(alpha) as an (edges x ops) heatmap with the weights written in the cells."""
    w = alpha.detach().float().softmax(-1).cpu().numpy()  # (E, K)
    fig = Figure(figsize=(1.0 + 0.9 * w.shape[1], 0.8 + 0.32 * w.shape[0]))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(w.shape[1]), space.ops, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(w.shape[0]), [f"{s}->{d}" for s, d in space.edges], fontsize=8)
    for e in range(w.shape[0]):
        for k in range(w.shape[1]):
            ax.text(k, e, f"{w[e, k]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if w[e, k] < 0.6 * w.max() else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB pixels (H, W, 3) of a figure."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.space.plot", "plot"))


def show_alpha(board: Board, alphas: dict[str, torch.Tensor], space: Space, step: int) -> None:
    """alpha of each cell type in TensorBoard: softmax(alpha) as a figure, the logits and the softmax as histograms."""
    for cell, a in alphas.items():
        board.figure(f"alpha/{cell}", alpha_figure(a, space, f"softmax(alpha) {cell}, epoch {step}"), step)
        board.histogram(f"alpha_logits/{cell}", a, step)
        board.histogram(f"alpha_softmax/{cell}", a.detach().softmax(-1), step)


def show_genotype(board: Board, genotype: Genotype, step: int, images: bool = True) -> None:
    """The genotype in TensorBoard: its text and, with ``images``, a drawing of each of its cells."""
    board.text("genotype", f"`{genotype.to_text()}`", step)
    if images:
        for cell in genotype.cells():
            board.figure(f"cells/{cell}", cell_figure(genotype, cell), step)
