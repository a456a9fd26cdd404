"""How well each zero-cost score ranks NAS-Bench-201's cells: seeded random cells scored on the user's images (each
cell's network freshly initialised, one batch), against the benchmark's 200-epoch validation accuracy on CIFAR-10,
CIFAR-100 and ImageNet16-120 (the [bench] extra's table).

    python benchmarks/score_correlation.py --data ~/cifar10-images [--cells 1000] [--subset-seeds 0,1,2] \\
        [--cache scores.jsonl]

Prints, per score and per ensemble of scores (the log-rank sum and the vote of nas/searching/zerocost.py): cells scored
per CPU-second; Kendall's tau and Spearman's rho against the table over all the cells drawn and within those in the
space's top 10% on that data set; and the pick of 100: the mean table accuracy of the best-scored cell of each group of
100 cells drawn (what a search that scores 100 random cells would find). The scores never read the table.
With --cache, every cell's scores are kept in a JSON-lines file and read back on the next run (a run can stop and
go on, and new ensembles cost nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nas.bench201 import DATASETS, RESNET_CELL, load_benchmark
from nas.data.datasets import load_image_folder
from nas.data.pipeline import channel_stats
from nas.searching.scores import get_score, score_names
from nas.searching.zerocost import aggregate, kendall_tau, random_cells, scoring_network, spearman
from nas.space.nb201 import from_nb201_string, to_nb201_string
from nas.space.spaces import get_space

DEFAULT_SCORES = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov", "zico", "swap", "meco", "ntk", "params",
                  "flops")
DEFAULT_ENSEMBLES = ("naswot+synflow", "naswot+zico", "synflow+zico", "naswot+synflow+zico",
                     "naswot+synflow+zico+ntk", "naswot+synflow+zico+jacob_cov")


def image_batch(root: str, images: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``batch`` images of a seeded subset of ``images`` training images of the folder, normalised by the subset's
    channel statistics; and the number of classes."""
    data = load_image_folder(Path(root).expanduser(), "train", 32)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:images]
    x8, y = data.images[idx], data.labels[idx]
    mean, std = channel_stats(x8)
    x = (x8[:batch].float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x, y[:batch], len(data.classes)


def score_subset(cells: list, names: list[str], args: argparse.Namespace, subset_seed: int,
                 cpu: dict[str, float], counted: dict[str, int]) -> dict[str, list[float]]:
    """Every score of ``names`` for every cell on one image subset, read from the cache where it holds them."""
    x, y, classes = image_batch(args.data, args.images, args.batch, subset_seed)
    x = x.contiguous(memory_format=torch.channels_last)
    setting = {"C": args.C, "layers": args.layers, "batch": args.batch, "images": args.images,
               "subset_seed": subset_seed}
    cached: dict[str, dict[str, float]] = {}
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r["setting"] == setting:
                cached.setdefault(r["arch"], {}).update(r["scores"])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for i, g in enumerate(cells, start=1):
        arch = to_nb201_string(g)
        have = cached.get(arch, {})
        todo = [n for n in names if n not in have]
        if todo:
            net = scoring_network(g, C=args.C, layers=args.layers, num_classes=classes,
                                  seed=subset_seed).to(memory_format=torch.channels_last)
            new = {}
            for n in todo:
                t = time.process_time()
                new[n] = get_score(n)(net, (x, y))
                cpu[n] += time.process_time() - t
                counted[n] += 1
            have = {**have, **new}
            cached[arch] = have
            if cache is not None:
                with cache.open("a") as f:
                    f.write(json.dumps({"arch": arch, "setting": setting, "scores": new}) + "\n")
        for n in names:
            scores[n].append(have[n])
        if i % max(1, len(cells) // 10) == 0:
            print(f"  subset {subset_seed}: {i}/{len(cells)} cells, {time.perf_counter() - start:.0f}s", flush=True)
    return scores


def spread(values: list[float]) -> str:
    """"0.61" for one value, "0.61 (0.60, 0.63)" for several: their mean, lowest and highest."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ({min(values):.2f}, {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="image folder (DIR/train/<class>/...), e.g. CIFAR-10's")
    p.add_argument("--cells", type=int, default=1000, help="distinct random cells drawn (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cells drawn")
    p.add_argument("--images", type=int, default=5000, help="training images each subset holds")
    p.add_argument("--subset-seeds", default="0", help="comma-separated seeds of the image subsets (and of the "
                                                       "networks' init): every cell is scored on each subset")
    p.add_argument("--batch", type=int, default=64, help="images in the scoring batch")
    p.add_argument("--C", type=int, default=8, help="channels of the scoring network")
    p.add_argument("--layers", type=int, default=1, help="cells per stage of the scoring network")
    p.add_argument("--scores", default=",".join(DEFAULT_SCORES), help=f"comma-separated, of {', '.join(score_names())}")
    p.add_argument("--ensembles", default=",".join(DEFAULT_ENSEMBLES), help="comma-separated, each a+b+...")
    p.add_argument("--cache", default="", help="JSON-lines file of every cell's scores, read back and extended")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.scores.split(",")
    for n in names:
        get_score(n)
    subsets = [int(s) for s in args.subset_seeds.split(",")]
    table = load_benchmark("table")
    space = get_space("nb201")
    cells = random_cells(space, args.seed, args.cells)
    cpu = {n: 0.0 for n in names}
    counted = {n: 0 for n in names}
    per_subset = [score_subset(cells, names, args, s, cpu, counted) for s in subsets]
    truth = {d: [table.accuracy(table.key(g), d) for g in cells] for d in DATASETS}
    top10 = {d: table.distribution(d)["p90"] for d in DATASETS}
    combos = [c.split("+") for c in filter(None, args.ensembles.split(","))]
    rows: dict[str, list[list[float]]] = {n: [s[n] for s in per_subset] for n in names}
    for parts in combos:
        if all(q in names for q in parts):
            for rule in ("logrank", "vote"):
                rows[f"{rule}({'+'.join(parts)})"] = [aggregate({q: s[q] for q in parts}, rule) for s in per_subset]

    print(f"\n{args.cells} random NAS-Bench-201 cells (seed {args.seed}), each scored at C={args.C}, "
          f"{args.layers} cell(s) per stage, on one batch of {args.batch} images of a subset of {args.images} images "
          f"of {args.data} (subset and init seeds {args.subset_seeds}); torch {torch.__version__}, {args.threads} "
          "thread(s). With several subsets: the mean over subsets (lowest, highest)\n")
    print("| score | cells per CPU-s | " + " | ".join(f"{d} tau | {d} rho | {d} top-10% tau" for d in DATASETS)
          + " | pick of 100: CIFAR-10 acc (min) |")
    print("|---|---|" + "---|---|---|" * len(DATASETS) + "---|")
    for name, runs in rows.items():
        speed = f"{counted[name] / cpu[name]:.1f}" if counted.get(name) and cpu[name] > 0 else ""
        cols = []
        for d in DATASETS:
            acc = truth[d]
            top = [i for i, a in enumerate(acc) if a >= top10[d]]
            cols.append(spread([kendall_tau(v, acc) for v in runs]))
            cols.append(spread([spearman(v, acc) for v in runs]))
            cols.append(spread([kendall_tau([v[i] for i in top], [acc[i] for i in top]) for v in runs])
                        + f" (n={len(top)})")
        picks = []
        for values in runs:
            for s in range(0, len(cells) - 99, 100):
                best = max(range(s, s + 100), key=lambda i: (values[i], -i))
                picks.append(truth["cifar10"][best])
        pick = f"{statistics.fmean(picks):.2f} ({min(picks):.2f})" if picks else ""
        print(f"| {name} | {speed} | " + " | ".join(cols) + f" | {pick} |")
    key = table.key(from_nb201_string(RESNET_CELL))
    print(f"\nthe ResNet cell: CIFAR-10 {table.accuracy(key, 'cifar10'):.2f}; the space's 90th percentile "
          f"{top10['cifar10']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
