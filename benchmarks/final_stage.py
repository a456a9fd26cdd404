"""The final stage's cost: finalists trained per CPU-minute, one network after another against all of them as one
module (nas/space/stacked.py), side by side in one run, at each image size asked for.

    python benchmarks/final_stage.py [--finalists 8] [--sizes 32,16] [--images 2500] [--epochs 1] [--repeats 3]

The finalists are random NAS-Bench-201 cells (seeded) in the final stage's network (C=8, one cell per stage) on
synthetic images; each way trains the same cells for the same epochs on the same batches, on one thread. The two
ways alternate ``--repeats`` times and the fastest of each is kept (the machine's noise only ever adds time). A
finalist-epoch is one epoch of one finalist over ``--images`` images; the figure printed is finalists trained for
``--epochs`` epochs per CPU-minute.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from nas.data.datasets import make_synthetic
from nas.data.pipeline import Batches
from nas.searching.finalists import OneByOne, Recipe, Together
from nas.searching.zerocost import scoring_network
from nas.space.derivation import random_genotype
from nas.space.spaces import get_space


def timed(way: type, cells: list, train: Batches, epochs: int, fmt: torch.memory_format) -> float:
    """CPU seconds to train every cell for ``epochs`` epochs ``way``."""
    recipe = Recipe(0.1, 0.9, 5e-4, len(train) * epochs, fmt)
    nets = [scoring_network(g, C=8, layers=1, num_classes=10, seed=0).to(memory_format=fmt) for g in cells]
    group = way(nets, recipe)
    start = time.process_time()
    for e in range(epochs):
        group.train_epoch(train, e)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--finalists", type=int, default=8)
    p.add_argument("--sizes", default="32,16", help="comma-separated image sizes (pixels)")
    p.add_argument("--images", type=int, default=2500, help="training images (the weight half of 5,000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--format", default="channels_last", choices=("channels_last", "contiguous"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fmt = torch.channels_last if args.format == "channels_last" else torch.contiguous_format
    rng = random.Random(args.seed)
    cells = [random_genotype(get_space("nb201"), rng) for _ in range(args.finalists)]
    print(f"{args.finalists} random NAS-Bench-201 cells, C=8, 1 cell per stage, {args.images} synthetic images, "
          f"batch 64, {args.epochs} epoch(s), {args.format}, 1 thread, torch {torch.__version__}; fastest of "
          f"{args.repeats}\n")
    print("| image size | one by one: finalists per CPU-minute | together: finalists per CPU-minute | ratio |")
    print("|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        data = make_synthetic(args.images, 10, size, seed=args.seed)
        train = Batches(data, batch_size=64, mean=[0.5] * 3, std=[0.25] * 3, seed=0, augment=True,
                        pad=4 * size // 32)
        best = {OneByOne: float("inf"), Together: float("inf")}
        for _ in range(args.repeats):
            for way in best:
                best[way] = min(best[way], timed(way, cells, train, args.epochs, fmt))
        alone, together = (args.finalists / (best[w] / 60) for w in (OneByOne, Together))
        print(f"| {size} px | {alone:.1f} | {together:.1f} | {together / alone:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
