"""What one data-parallel search step communicates: the gradient bytes a weight step and an alpha step all-reduce
(nas.run.distributed.Dist.average_gradients reduces exactly the gradients that exist), against what reducing the whole
supernet would cost, for a recipe's supernet. Counted in one process from real backward passes; no network needed.

    python benchmarks/comm_bytes.py --config configs/search/gdas-darts-cifar10.yaml --samples 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.config import SearchConfig, load_config  # noqa: E402
from nas.searching.bilevel import search_mixer  # noqa: E402
from nas.searching.supernet import build_supernet  # noqa: E402
from nas.space.spaces import search_space  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/search/gdas-darts-cifar10.yaml")
    parser.add_argument("--samples", type=int, default=20, help="weight steps (samples) to count")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(SearchConfig, args.config)
    torch.manual_seed(0)
    s = cfg.search
    model = build_supernet(search_space(cfg.model.space, cfg.model.ops, cfg.model.macro), C=cfg.model.C,
                           layers=cfg.model.layers, num_classes=args.classes,
                           mixer=search_mixer(s),
                           stem_multiplier=cfg.model.stem, macro=cfg.model.macro)
    x = torch.randn(4, 3, args.image_size, args.image_size)
    y = torch.randint(0, args.classes, (4,))
    weights = model.weight_parameters()
    total = sum(p.numel() for p in weights)
    model.set_step("weights")
    counts = []
    for _ in range(args.samples):
        for p in weights:
            p.grad = None
        torch.nn.functional.cross_entropy(model(x), y).backward()
        counts.append(sum(p.numel() for p in weights if p.grad is not None))
    alpha = sum(p.numel() for p in model.arch_parameters())
    mean = statistics.mean(counts)
    print(f"{args.config}: {s.mixer}, {total:,} weights ({4 * total / 2**20:.2f} MiB in float32), alpha {alpha} "
          f"entries ({4 * alpha} bytes)")
    print(f"weight step: {4 * mean / 2**20:.2f} MiB on average over {args.samples} samples "
          f"(min {4 * min(counts) / 2**20:.2f}, max {4 * max(counts) / 2**20:.2f}), "
          f"{mean / total:.2f} of the supernet's weights")
    print(f"alpha step: {4 * alpha} bytes")
    print(f"weight_step_over_full_supernet {mean / total:.3f}")


if __name__ == "__main__":
    main()
