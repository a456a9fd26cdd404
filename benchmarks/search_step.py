"""Time a full search step (weight step + alpha step, as nas.searching.bilevel's loop does it) for GDAS and DARTS
mixing, and the same work for the child, and print one JSON object of medians and ratios.

The child is the same topology with every edge fixed to the op GDAS sampled for it at that step (the GDAS process
records its samples and the child process that follows it replays them), trained as a plain network: SGD on its
weights, on the same two batches a search step sees. "gdas_over_child" is what GDAS's search machinery costs on top
of training the networks it samples.

Each variant runs in its own process (fresh allocator, no shared caches); the processes alternate
(gdas, child, darts, gdas, ...) so that drifts of a noisy machine hit all variants alike; each drops warm-up steps.
A GDAS step costs what its samples cost, so each round draws its own samples (and batches): the median is taken over
rounds x steps different networks, not the same few networks timed again.
Each variant is timed in both memory formats (NCHW and channels-last, which decide how fast oneDNN's CPU kernels
and cuDNN's run) and judged by its faster one: every method at its best, as a user would run it.
The search steps (every variant but the child) run inside the search loop's frame (nas.run.runtime.Loop, on a run in a
temporary directory), which does after each step what the search does: the agreement on faults and signals, the
epoch's sums, progress, the checkpoint when due and the stop. Its time is measured apart from the step's, in the same
run: "*_frame_ms" per step, and "*_frame_share" of the step.

    python benchmarks/search_step.py --space darts            # C=16, 8 cells, batch 64, 2 threads, CPU
    python benchmarks/search_step.py --space nb201            # C=16, N=5, batch 64

With --nproc N it measures data-parallel scaling instead: gdas and darts steps run under torchrun in 1 process and
in N processes (each with --threads threads, or one GPU each with --device cuda) on the same global batch, and it
prints the step times, the scaling efficiency (N-process throughput over N times 1-process throughput) and the
gradient bytes each process all-reduced per step.

    python benchmarks/search_step.py --space nb201 --nproc 2 --threads 1 --formats nchw    # 2 CPU processes
    python benchmarks/search_step.py --space darts --nproc 8 --device cuda --formats nhwc  # 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fixed_sample(model: object, indices: dict[str, list[int]]) -> dict:
    """A mixing per cell type that runs the given op on every edge, with no alpha involved."""
    from nas.searching.mixing import GdasSample

    out = {}
    for t, index in indices.items():
        sample = GdasSample.__new__(GdasSample)
        sample.index, sample.hard = index, None
        out[t] = sample
    return out


def loop_frame(args: argparse.Namespace, objects: dict, steps: int, tmp: Path) -> object:
    """The search loop's frame (nas.run.runtime.Loop) around ``steps`` steps, on a new run in ``tmp``: what the search
    does after each step besides the step itself."""
    from nas.config import RunConfig
    from nas.run.runtime import Loop, Run

    run_cfg = RunConfig(dir=str(tmp / f"run-{args.variant}"), device=args.device, tensorboard=False)
    run = Run(run_cfg, 0, "bench", "search", "", None, quiet=False)  # a piped run's progress, as a job's
    return Loop(run, run_cfg, 1, steps, objects, ())


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process: returns per-step times (ms) of the step and of the loop frame's work after it,
    peak memory above the pre-step baseline (MiB) and the share of step time spent producing batches."""
    import contextlib
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    from nas.data.datasets import make_synthetic
    from nas.data.pipeline import Batches, batch_seed, channel_stats
    from nas.run.distributed import Dist, setup
    from nas.searching.bilevel import bilevel_step, step_postfix, weight_step
    from nas.searching.mixing import GdasSample, create_mixer, has_tau
    from nas.searching.supernet import build_supernet

    torch.set_num_threads(args.threads)
    d, device = setup(torch.device(args.device)) if "WORLD_SIZE" in os.environ else (Dist(), torch.device(args.device))
    cuda = device.type == "cuda"
    steps = args.warmup + args.steps
    data = make_synthetic(2 * args.batch * steps, 10, 32, seed=0)
    mean, std = channel_stats(data.images)
    half = len(data) // 2
    common = dict(batch_size=args.batch, mean=mean, std=std, device=device, augment=True, shard=(d.rank, d.world))
    train = Batches(data, torch.arange(half), seed=2 * args.round, **common)  # type: ignore[arg-type]
    valid = Batches(data, torch.arange(half, len(data)), seed=2 * args.round + 1, **common)  # type: ignore[arg-type]

    torch.manual_seed(0)
    mixer_name = {"darts": "darts", "darts2": "darts", "snas": "snas", "random": "random"}.get(args.variant, "gdas")
    mixer = create_mixer(mixer_name, **({"tau_max": 10.0, "tau_min": 10.0} if has_tau(mixer_name) else {}))
    fmt = torch.channels_last if args.format == "nhwc" else torch.contiguous_format
    model = build_supernet(args.space, C=args.C, layers=args.layers, num_classes=10, mixer=mixer).to(device)
    model.to(memory_format=fmt)
    model.train()
    d.broadcast_parameters(model)
    if d.active:  # every process draws the same samples, as nas.searching.bilevel does
        model.generator = torch.Generator(device=device)
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    samples = Path(args.samples)
    if args.variant == "child":
        # Fix each step's network to the ops the GDAS run sampled (its weight step's and its alpha step's): the
        # child has no alpha and no sampling. Without a recorded GDAS run, draw from the same seed instead.
        model.set_step("weights")
        if samples.exists():
            recorded = json.loads(samples.read_text())
            plan = [[fixed_sample(model, r) for r in recorded[2 * i: 2 * i + 2]] for i in range(steps)]
        else:
            torch.manual_seed(1 + args.round)
            frozen = {t: a.detach() for t, a in model.alpha.items()}
            plan = [[{t: GdasSample(a, 10.0) for t, a in frozen.items()} for _ in range(2)] for _ in range(steps)]
    elif args.variant == "gdas":
        drawn: list[dict[str, list[int]]] = []
        sample_once = model.mixings

        def recording() -> dict:
            mixing = sample_once()
            drawn.append({t: m.index for t, m in mixing.items()})  # type: ignore[attr-defined]
            return mixing

        model.mixings = recording  # type: ignore[method-assign]

    searching = args.variant != "child" and not d.active  # the search's own steps, in its loop frame
    frame: Any = loop_frame(args, {"model": model, "w_opt": w_opt, "a_opt": a_opt}, steps,
                            Path(tempfile.mkdtemp())) if searching else None
    torch.manual_seed(1 + args.round)  # each round draws its own GDAS samples (the child replays them)
    times, data_times, frame_times = [], [], []
    batches = zip(train.epoch(0), valid.epoch(0), strict=False)
    base = torch.cuda.memory_allocated(device) if cuda else rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stack = contextlib.ExitStack()
    if frame is not None:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # its progress lines: stdout is the report's
        stack.enter_context(frame)
        meter, _ = frame.start_epoch(0, sums=4, streams=2)
    for i in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (xw, yw), (xa, ya) = next(batches)
        xw, xa = xw.contiguous(memory_format=fmt), xa.contiguous(memory_format=fmt)
        if cuda:
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if model.generator is not None:
            model.generator.manual_seed(batch_seed(args.round, 0, i, 1))
        if args.variant == "child":  # the sampled networks alone, one weight step each
            for (x, y), fixed in zip(((xw, yw), (xa, ya)), plan[i], strict=True):
                model.mixings = lambda fixed=fixed: fixed  # type: ignore[method-assign]
                weight_step(model, x, y, w_opt, weights, 5.0)
        else:  # the loop's own step (nas.searching.bilevel.bilevel_step): DARTS takes the alpha step first, darts2
            # is second order, random only measures the alpha batch; under torchrun it is the data-parallel step
            w_loss, w_correct, a_loss, a_correct = bilevel_step(
                model, (xw, yw), (xa, ya), w_opt, a_opt, weights,
                order="alpha_first" if args.variant in ("darts", "darts2") else "weights_first",
                frozen=args.variant == "random", xi=0.025 if args.variant == "darts2" else None, dist=d)
        if cuda:
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if frame is not None:  # what nas.searching.bilevel's loop does after each step, as it does it
            step = i + 1
            frame.check(w_loss + a_loss, step, lambda: "")
            meter.add([w_loss * len(yw), w_correct, a_loss * len(ya), a_correct], len(yw), len(ya))
            frame.stepped(step, lambda m: step_postfix(m, mixer.tau))
            if cuda:
                torch.cuda.synchronize(device)
        t3 = time.perf_counter()
        if i >= args.warmup:
            times.append(1000 * (t2 - t0))
            data_times.append(1000 * (t1 - t0))
            frame_times.append(1000 * (t3 - t2))
    stack.close()
    if args.variant == "gdas" and not d.active:
        samples.write_text(json.dumps(drawn))
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:  # the high-water mark of resident memory above what the process held before the first step
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"times_ms": times, "data_ms": data_times, "frame_ms": frame_times if frame is not None else [],
            "peak_mib": peak, "rank": d.rank, "reduced_mib_per_step": d.bytes_reduced / steps / 2**20}


def scaling(args: argparse.Namespace) -> None:
    """gdas and darts steps in 1 and in N processes under torchrun, alternating; one JSON object of medians, the
    scaling efficiency and the bytes reduced per step."""
    import tempfile

    n, fmt = args.nproc, args.formats.split(",")[0]
    variants = [v for v in args.variants.split(",") if v in ("gdas", "darts")] or ["gdas", "darts"]
    if args.batch % n:
        sys.exit(f"--batch {args.batch} does not split evenly over {n} processes")
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("space", "C", "layers", "batch", "steps", "warmup",
                                                          "threads", "device")]
    tmp = Path(tempfile.mkdtemp())
    results: dict[tuple[str, int], list[dict]] = {(v, w): [] for v in variants for w in (1, n)}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    port = 29600
    for r in range(args.rounds):
        for v in variants:
            for w in (1, n):
                port += 1
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={w}",
                       f"--master_port={port}", __file__, *passthrough, f"--variant={v}", f"--format={fmt}",
                       f"--round={r}", f"--samples={tmp / 'unused.json'}"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if out.returncode != 0:
                    sys.exit(f"the {v} worker ({w} processes) failed:\n{out.stderr[-3000:]}")
                results[(v, w)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report: dict[str, object] = {}
    for v in variants:
        t1 = statistics.median(t for res in results[(v, 1)] for t in res["times_ms"])
        tn = statistics.median(t for res in results[(v, n)] for t in res["times_ms"])
        report[f"{v}_ms_1proc"] = round(t1, 1)
        report[f"{v}_ms_{n}proc"] = round(tn, 1)
        report[f"{v}_efficiency"] = round(t1 / (n * tn), 3)  # (2B / tn) / (n * 2B / t1): the same global batch
        report[f"{v}_reduced_mib_per_step"] = round(statistics.median(
            res["reduced_mib_per_step"] for res in results[(v, n)]), 3)
    report["settings"] = {"space": args.space, "C": args.C, "layers": args.layers, "global_batch": args.batch,
                          "nproc": n, "threads_per_process": args.threads, "device": args.device, "format": fmt,
                          "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
    print(json.dumps(report))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", choices=["darts", "nb201"], default="darts")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=None, help="cells (darts, default 8) or cells per stage (nb201, "
                                                            "default 5)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    p.add_argument("--rounds", type=int, default=3, help="processes per variant, alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default="gdas,child,darts",
                   help="comma-separated: gdas, child (GDAS's sampled networks alone), darts, darts2 (second order), "
                        "snas, random")
    p.add_argument("--formats", default="nchw,nhwc", help="memory formats to time each variant in: nchw, nhwc")
    p.add_argument("--format", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)  # set in the worker processes
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--samples", help=argparse.SUPPRESS)  # where the GDAS worker records its samples for the child
    p.add_argument("--nproc", type=int, default=0, help="measure data-parallel scaling over N processes (torchrun)")
    args = p.parse_args()
    if args.layers is None:
        args.layers = 8 if args.space == "darts" else 5
    if args.variant:
        result = worker(args)
        if result["rank"] == 0:
            print(json.dumps(result))
        return
    if args.nproc:
        scaling(args)
        return

    variants = args.variants.split(",")
    formats = args.formats.split(",")
    results: dict[tuple[str, str], list[dict]] = {(v, f): [] for v in variants for f in formats}
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("space", "C", "layers", "batch", "steps", "warmup",
                                                          "threads", "device")]
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    for r in range(args.rounds):
        for f in formats:
            for v in variants:
                cmd = [sys.executable, __file__, *passthrough, f"--variant={v}", f"--format={f}", f"--round={r}",
                       f"--samples={tmp / f'samples-{f}.json'}"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    sys.exit(f"the {v} worker ({f}) failed:\n{out.stderr}")
                results[(v, f)].append(json.loads(out.stdout.strip().splitlines()[-1]))

    report: dict[str, object] = {}
    for v in variants:
        medians = {f: statistics.median(t for r in results[(v, f)] for t in r["times_ms"]) for f in formats}
        best = min(formats, key=lambda f: medians[f])
        times = [t for r in results[(v, best)] for t in r["times_ms"]]
        report[f"{v}_ms"] = round(medians[best], 1)
        report[f"{v}_format"] = best
        for f in formats:
            report[f"{v}_ms_{f}"] = round(medians[f], 1)
        report[f"{v}_peak_mib"] = round(max(r["peak_mib"] for r in results[(v, best)]), 1)
        report[f"{v}_data_share"] = round(sum(t for r in results[(v, best)] for t in r["data_ms"]) / sum(times), 4)
        frame = [t for r in results[(v, best)] for t in r["frame_ms"]]
        if frame:  # the loop frame's work after each step, beside the step, in the same processes
            report[f"{v}_frame_ms"] = round(statistics.median(frame), 3)
            report[f"{v}_frame_share"] = round(sum(frame) / sum(times), 5)
    if "gdas" in variants and "child" in variants:
        report["gdas_over_child"] = round(report["gdas_ms"] / report["child_ms"], 3)  # type: ignore[operator]
        same = report["gdas_format"]  # memory compared in the same format
        g_peak = max(r["peak_mib"] for r in results[("gdas", same)])  # type: ignore[index]
        c_peak = max(r["peak_mib"] for r in results[("child", same)])  # type: ignore[index]
        report["gdas_peak_over_child"] = round(g_peak / c_peak, 3)
    for v in variants:  # every other method's step time over GDAS's, measured side by side
        if "gdas" in variants and v not in ("gdas", "child"):
            report[f"{v}_over_gdas"] = round(report[f"{v}_ms"] / report["gdas_ms"], 2)  # type: ignore[operator]
    report["settings"] = {"space": args.space, "C": args.C, "layers": args.layers, "batch": args.batch,
                          "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
                          "device": args.device, "formats": formats}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
