"""What a cell costs (search.budget): each candidate op's cost at each edge's position in the network a cell will be
trained in, counted or timed once, and a cell's cost from them, exact for a derived cell and expected under the
mixer's weights during the search. nas/searching/budget.py holds the budget that these costs are held to.

A cell's cost is linear in its ops: the cost of the network outside the searched edges (stem, reduction blocks,
classifier: ``base``) plus, for every edge the cell keeps, the cost of its op summed over every cell of the network
(``table[cell type][edge, op]``), at the positions the space says (Space.cost_slots). For parameters and FLOPs,
counted by nas.space.network's own counters on the discrete network, that is exact (tests/test_budget.py checks it
against whole-network counts of random cells, and, in the NAS-Bench-201 space, against the benchmark table's sizes).
For latency it is the lookup-table model of FBNet (Wu et al. 2019) and ProxylessNAS (Cai et al. 2019): every op timed
alone on the run's device at its position's input.

Under GDAS the expected cost is the cost of the sampled cell, sum over edges of h_o c_o with the straight-through
one-hot h, so its gradient reaches alpha through the soft weights; under the other mixers it is the cost under
softmax(alpha). Where a node keeps 2 of its inputs (the DARTS space), an edge's cost is weighted by 2 / (the node's
inputs): the supernet's expectation of the derived cell's cost is then an approximation; the derived cell's cost is
exact.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.errors import UserError
from nas.space.genotype import Genotype
from nas.space.spaces import Space

METRICS = ("params", "flops", "latency")
UNITS = {"params": "M params", "flops": "M FLOPs", "latency": "ms"}


def fmt(value: float, metric: str) -> str:
    """A cost with its unit: 0.372M params, 12.3M FLOPs, 4.21 ms."""
    return f"{value:.2f} ms" if metric == "latency" else f"{value:.3f}{UNITS[metric]}"


# ---------------------------------------------------------------------------------------------- cost model

@dataclass
class CostModel:
    """A cell's cost in ``metric`` (M params, M FLOPs or ms) in one network: base + its ops' costs."""

    metric: str
    space: Space
    base: float
    table: dict[str, torch.Tensor]   # cell type -> (E, K) float64: op k on edge e, summed over the network's cells
    network: dict[str, Any]          # what the costs were counted on (C, layers, classes, image size, ...)
    _on: dict[Any, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict, repr=False)  # share x table

    @property
    def share(self) -> torch.Tensor:
        """(E,) the weight of each edge in an expectation: 1 where a cell keeps every edge (NAS-Bench-201), the inputs
        a node keeps over its inputs where it keeps some of them (DARTS: 2 of the node's)."""
        kept = self.space.kept_inputs
        if kept is None:
            return torch.ones(self.space.num_edges, dtype=torch.float64)
        return torch.tensor([kept / dst for _, dst in self.space.edges], dtype=torch.float64)

    def of(self, genotype: Genotype) -> float:
        """The exact cost of a genotype's network (for latency: the lookup-table estimate)."""
        total = self.base
        for t, (nodes, _) in genotype.cells().items():
            if t not in self.table:
                continue
            for node_id, node in zip(self.space.nodes, nodes, strict=True):
                for op, src in node:
                    total += float(self.table[t][self.space.edges.index((src, node_id)), self.space.ops.index(op)])
        return total

    def expected(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """base + sum over cell types, edges and ops of weight x cost (weights: (E, K) per cell type, a one-hot GDAS
        sample or softmax(alpha)); differentiable in the weights."""
        some = next(iter(weights.values()))
        key = (some.device, some.dtype)
        if key not in self._on:  # the tables once per device and dtype: this runs every alpha step
            self._on[key] = {t: (self.share[:, None] * c).to(some.device, some.dtype) for t, c in self.table.items()}
        tables = self._on[key]
        total = torch.zeros((), dtype=some.dtype, device=some.device) + self.base
        for t, w in weights.items():
            total = total + (w * tables[t]).sum()
        return total

    def kept_columns(self) -> list[int]:
        """The columns of the ops an edge a cell keeps may hold."""
        return [k for k, op in enumerate(self.space.ops) if op in self.space.kept_ops]

    def extreme(self, pick: Callable[..., Any]) -> float:
        """The cost of the cheapest (pick=min) or dearest (pick=max) cell the derivation rules can give."""
        total, real, kept = self.base, self.kept_columns(), self.space.kept_inputs
        for c in self.table.values():
            best = [pick(float(c[e, k]) for k in real) for e in range(self.space.num_edges)]
            if kept is None:  # every edge kept
                total += sum(best)
                continue
            for node in self.space.nodes:
                costs = sorted(best[e] for e in self.space.edges_into(node))
                total += sum(costs[:kept] if pick is min else costs[-kept:])
        return total


def _flops_by_module(net: nn.Module, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Multiply-adds of one forward pass, in all and per module name (torch's counter, as nas.space.network counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    prefix = type(net).__name__ + "."
    per = {k[len(prefix):]: sum(v.values()) / 2 for k, v in counter.get_flop_counts().items() if k.startswith(prefix)}
    return counter.get_total_flops() / 2, per


def _time_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The median wall time of ``fn`` in milliseconds, after a warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _time_slots(net: nn.Module, x: torch.Tensor, names: list[str], timed: dict[tuple[Any, ...], float],
                device: torch.device, repeats: int) -> dict[str, float]:
    """ms per named module of ``net``, each timed alone on the input it gets in a forward pass of x; modules of one
    kind and input shape are timed once (``timed`` keeps them across calls)."""
    modules = dict(net.named_modules())
    inputs: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable[..., None]:
        return lambda module, args: inputs.__setitem__(name, args[0].detach().clone())

    hooks = [modules[name].register_forward_pre_hook(keeper(name)) for name in names]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    per = {}
    for name in names:
        key = (repr(modules[name]), tuple(inputs[name].shape))
        if key not in timed:
            timed[key] = _time_ms(functools.partial(modules[name], inputs[name]), device, repeats)
        per[name] = timed[key]
    return per


def count_costs(metric: str, space: Space, *, C: int, layers: int, classes: int, channels: int, size: int,
                device: torch.device | None = None, batch: int = 1, repeats: int = 20,
                say: Callable[[str], None] | None = None) -> CostModel:
    """The cost model of ``space``'s cells in the network of C channels and ``layers``
    (nas.space.network.build_network), for ``classes`` classes and images of ``channels`` x ``size`` x ``size``.
    Latency: each op module timed alone on ``device`` at its input shape (a batch of ``batch``), and the base as the
    network of `none` cells."""
    from nas.space.network import build_network, count_parameters

    if metric not in METRICS:
        raise UserError(f"unknown budget metric {metric!r}; valid: {', '.join(METRICS)}")
    device = device or torch.device("cpu")
    table = {t: torch.zeros(space.num_edges, space.num_ops, dtype=torch.float64) for t in space.cell_types}
    base = None
    timed: dict[tuple[Any, ...], float] = {}  # (module repr, input shape) -> ms: positions of one shape share it
    scale = 1.0 if metric == "latency" else 1e6
    for k, op in enumerate(space.ops):
        for g in space.cover_genotypes(op):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = build_network(g, C=C, layers=layers, num_classes=classes, in_channels=channels).to(device)
            net.eval()
            x = torch.zeros(batch if metric == "latency" else 1, channels, size, size, device=device)
            slots = space.cost_slots(net, g)
            modules = dict(net.named_modules())
            if metric == "params":
                per = {name: float(sum(p.numel() for p in modules[name].parameters())) for name, *_ in slots}
                total = float(count_parameters(net))
            elif metric == "flops":
                total, flops = _flops_by_module(net, x)
                per = {name: flops.get(name, 0.0) for name, *_ in slots}
            else:
                per = _time_slots(net, x, [name for name, *_ in slots], timed, device, repeats)
                total = _time_ms(functools.partial(net, x), device, repeats) if base is None else math.nan
            cell = {t: torch.zeros_like(c) for t, c in table.items()}
            for name, t, e, kk in slots:
                cell[t][e, kk] += per[name] / scale
            for t, c in cell.items():
                covered = c[:, k] != 0
                table[t][covered, k] = c[covered, k]
            if not math.isnan(total) and base is None:
                base = total / scale - sum(per[name] for name, *_ in slots) / scale
        if say is not None and metric == "latency":
            say(f"  latency table: {op} timed at every position ({k + 1}/{space.num_ops} ops)")
    assert base is not None
    network = {"space": space.name, "ops": list(space.ops), "C": C, "layers": layers, "classes": classes,
               "channels": channels, "image_size": size}
    if metric == "latency":
        base = max(base, 0.0)  # timing noise must not make the rest of the network free
        network.update(batch=batch, device=device_name(device), threads=torch.get_num_threads(),
                       torch=torch.__version__)
    return CostModel(metric, space, base, table, network)


# ---------------------------------------------------------------------------------------------- latency tables

def device_name(device: torch.device) -> str:
    """What latencies depend on: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency_path(network: dict[str, Any]) -> Path:
    """Where the latency table of a network on a device is cached: $NAS_CACHE_DIR/latency/<hash of its key>.json."""
    from nas.data.datasets import cache_dir

    digest = hashlib.sha256(json.dumps(network, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "latency" / f"{digest}.json"


def save_costs(cost: CostModel, path: Path) -> None:
    from nas.run.runlog import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"metric": cost.metric, "network": cost.network, "base": cost.base,
                                        "table": {t: c.tolist() for t, c in cost.table.items()}}, indent=1) + "\n")


def load_costs(path: Path, space: Space) -> CostModel:
    try:
        raw = json.loads(path.read_text())
        table = {t: torch.tensor(c, dtype=torch.float64) for t, c in raw["table"].items()}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"latency table {str(path)!r} cannot be read ({e}); write it again with python -m nas "
                        "latency") from None
    if raw["network"]["ops"] != list(space.ops) or set(table) != set(space.cell_types):
        raise UserError(f"latency table {str(path)!r} is of another space ({raw['network']['space']}, ops "
                        f"{raw['network']['ops']}); write one for this search with python -m nas latency")
    return CostModel(raw["metric"], space, float(raw["base"]), table, raw["network"])


def latency_table(space: Space, net: dict[str, int], device: torch.device, batch: int, path: str | None,
                  say: Callable[[str], None], force: bool = False) -> CostModel:
    """The latency cost model: read from ``path`` or the cache, or (absent, or with ``force``) timed on ``device``
    and cached."""
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"search.budget.latency_table={path!r} is not a file; write one with python -m nas latency "
                            "--config RECIPE --out FILE, or leave it empty to use the cache")
        return load_costs(Path(path), space)
    key = {"space": space.name, "ops": list(space.ops), "classes": net["classes"], "channels": net["channels"],
           "C": net["C"], "layers": net["layers"], "image_size": net["size"], "batch": batch,
           "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    from nas.run.files import file_lock

    cached = latency_path(key)
    # one process times it while the others wait for the table (torchrun ranks, a study's jobs, two searches)
    with file_lock(cached.with_name(f".{cached.name}.lock")):
        if cached.is_file() and not force:
            say(f"latency table: {cached}")
            return load_costs(cached, space)
        say(f"latency table: timing every op at every position on {key['device']} (batch {batch}); cached in "
            f"{cached}")
        cost = count_costs("latency", space, device=device, batch=batch, say=say, **net)
        save_costs(cost, cached)
    return cost


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.searching.costs", "latency"))
