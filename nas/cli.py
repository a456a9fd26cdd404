"""Command-line entry points: parse arguments, run, and turn user errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from nas.config import SearchConfig, TrainConfig, UserError, load_config


def run_guarded(fn: Callable[[], object]) -> int:
    """Run fn; a UserError prints ``error: <one line>`` on stderr and returns 2, with no traceback."""
    try:
        fn()
    except UserError as e:
        message = " ".join(str(e).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def genotype_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nas.genotype", description="Check a genotype and print it in another format.",
        epilog="example: python -m nas.genotype runs/quickstart --to darts")
    parser.add_argument("genotype", help="genotype.json, a run directory, a DARTS Genotype(...) text file, "
                                         "or a genotype string")
    parser.add_argument("--to", choices=["json", "text"], default="json",
                        help="json (canonical) or text (DARTS Genotype(...) text or the NB201 string)")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        from nas.genotype import load_genotype

        g = load_genotype(args.genotype)
        print(g.to_json() if args.to == "json" else g.to_text(), end="" if args.to == "json" else "\n")

    return run_guarded(go)


def search_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="search.py", description="Differentiable architecture search (GDAS or DARTS) on a cell supernet.",
        epilog="example: python search.py --config configs/quickstart.yaml search.epochs=2 run.dir=runs/try")
    parser.add_argument("--config", metavar="YAML", help="recipe file (defaults apply to keys it leaves out)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        from nas.search import run_search  # imported here so that --help and config errors are quick

        cfg = load_config(SearchConfig, args.config, args.overrides)
        run_search(cfg, name=Path(args.config).stem if args.config else "search")

    return run_guarded(go)


def parse_seeds(text: str, first: int) -> list[int]:
    """``3`` means 3 seeds from the config's seed on; ``0,1,2`` lists them."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(first, first + int(text)))
    except ValueError:
        raise UserError(f"--seeds {text!r} is neither a count (3) nor a list of seeds (0,1,2)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r} must give at least one seed, no seed twice, none negative")
    return seeds


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="Train a genotype from scratch and test it; or --summary its size.",
        epilog="example: python evaluate.py --config configs/eval/darts-cifar10.yaml --genotype DARTS_V2 --summary")
    parser.add_argument("--config", metavar="YAML", help="training recipe (defaults apply to keys it leaves out)")
    parser.add_argument("--genotype", required=True, metavar="G",
                        help="a published name (DARTS_V2, GDAS_V1, ...), genotype.json, a search run directory, "
                             "a DARTS Genotype(...) text file or an NB201 string")
    parser.add_argument("--summary", action="store_true",
                        help="print parameters and multiply-adds as JSON, train nothing")
    parser.add_argument("--seeds", metavar="N|S1,S2,...", help="repeat with N seeds (or these seeds), mean ± std")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        import json

        from nas.genotype import load_genotype
        from nas.train import run_repeats, run_train, summarize

        cfg = load_config(TrainConfig, args.config, args.overrides)
        genotype = load_genotype(args.genotype)
        if args.summary:
            print(json.dumps(summarize(cfg, genotype)))
            return
        name = Path(args.config).stem if args.config else "train"
        if args.seeds:
            run_repeats(cfg, genotype, parse_seeds(args.seeds, cfg.seed), name)
        else:
            run_train(cfg, genotype, name)

    return run_guarded(go)
