"""Which judge of a final stage ranks its finalists as NAS-Bench-201's table does: the short list a search would train
(the best cells of a pool by zero-cost scores, on the user's images), each finalist trained alone in several settings,
and every judge computed from the recorded curves, against the table's 200-epoch accuracy among the finalists.

    python benchmarks/judge_study.py --data ~/cifar10-images --subset-seeds 0,1,2,3,4 --finalists 12 \\
        --settings e12,e12:s1,e24 --out runs/judge-c10.jsonl [--shard 0/2]
    python benchmarks/judge_study.py --data ~/cifar10-images --subset-seeds 0,1,2,3,4 --finalists 12 \\
        --settings e12,e12:s1,e24 --out runs/judge-c10.jsonl --report

Each subset seed is a search's seed: it draws the 5,000-image subset, its weight and alpha halves, the pool of
distinct random cells and the networks' initialisation, exactly as ``search.py`` does with that seed. A setting is
``eE[:sS][:rR][:cC][:lL]``: E epochs of the final stage's schedule (SGD, cosine from 0.1), the S-th other
initialisation (S=0: the search's own), images at R pixels (default: the data's), C channels (default 8), L cells per
stage (default 1); ``a1`` trains on both halves (then only the training losses judge: TSE). Every epoch's training
loss is recorded, and the accuracy and loss on the alpha half after each of the last ``--measured`` epochs.

Every (cell, setting) is one line of the JSON-lines file ``--out``, written as it finishes; a run that stops goes on
where it stopped, and ``--shard i/n`` runs every n-th piece so that n processes share the work. ``--report`` reads the
file and prints, per judge, Kendall's tau with the table among each subset's finalists, the table accuracy of the
cell it picks, and its shortfall from the best finalist, with the CPU time the judge costs per finalist.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nas.bench201 import load_benchmark
from nas.data.datasets import ImageSet, load_image_folder
from nas.data.pipeline import Batches, bilevel_split, channel_stats, resize
from nas.searching.finalists import evaluate, train_epoch
from nas.searching.zerocost import kendall_tau, random_cells, rank_cells, scoring_network
from nas.space.genotype import Genotype
from nas.space.nb201 import from_nb201_string, to_nb201_string
from nas.space.spaces import get_space

SCORES = ("naswot", "synflow", "zico")


def parse_setting(text: str) -> dict[str, int]:
    """"e12:s1:r16" -> {"epochs": 12, "init": 1, "px": 16, "C": 8, "layers": 1}; px 0 is the data's own size."""
    out = {"epochs": 0, "init": 0, "px": 0, "C": 8, "layers": 1, "all": 0}
    names = {"e": "epochs", "s": "init", "r": "px", "c": "C", "l": "layers", "a": "all"}
    for part in text.split(":"):
        if not part or part[0] not in names or not part[1:].isdigit():
            raise SystemExit(f"bad setting {text!r}: expected eE[:sS][:rR][:cC][:lL], e.g. e12:s1")
        out[names[part[0]]] = int(part[1:])
    if out["epochs"] < 1:
        raise SystemExit(f"bad setting {text!r}: it needs eE with E >= 1")
    return out


class Subset:
    """What a search with seed ``seed`` reads: the halves of its subset, its scoring batch and its short list."""

    def __init__(self, data: ImageSet, seed: int, images: int, batch_size: int = 64, score_batch: int = 64):
        self.seed, self.batch_size = seed, batch_size
        self.mean, self.std = channel_stats(data.images)  # of the whole folder, as the search takes them
        w_idx, a_idx = bilevel_split(len(data), 0.5, seed, images)
        idx = torch.cat([w_idx, a_idx])  # the subset alone: the weight half, then the alpha half, in the search's order
        self.data = ImageSet(data.images[idx], data.labels[idx], data.classes)
        self.w_idx, self.a_idx = torch.arange(len(w_idx)), torch.arange(len(w_idx), len(idx))
        valid = Batches(self.data, self.a_idx, batch_size=batch_size, mean=self.mean, std=self.std, seed=seed + 1)
        x = torch.addcmul(valid.shift, valid.images[:score_batch].float(), valid.scale)
        self.score_batch = (x.contiguous(memory_format=torch.channels_last), valid.labels[:score_batch])
        self.classes = len(data.classes)
        self.resized: dict[int, ImageSet] = {}

    def short_list(self, pool: int, finalists: int) -> list[Genotype]:
        cells = random_cells(get_space("nb201"), self.seed, pool)
        ranked = rank_cells(cells, SCORES, "logrank", self.score_batch, C=8, layers=1, num_classes=self.classes,
                            seed=self.seed, memory_format=torch.channels_last, say=lambda _: None)
        return [g for g, _ in ranked[:finalists]]

    def halves(self, px: int, both: bool = False) -> tuple[Batches, Batches]:
        data = self.data
        if px and px != data.images.shape[-1]:
            if px not in self.resized:
                self.resized[px] = ImageSet(resize(data.images, px), data.labels, data.classes)
            data = self.resized[px]
        common: dict[str, Any] = dict(batch_size=self.batch_size, mean=self.mean, std=self.std)
        pad = 4 * data.images.shape[-1] // 32  # the crop's padding in proportion to the image (4 px at 32 px)
        idx = torch.cat([self.w_idx, self.a_idx]) if both else self.w_idx
        train = Batches(data, idx, seed=self.seed, augment=True, pad=pad, **common)
        valid = Batches(data, self.a_idx, shuffle=False, drop_last=False, **common)
        return train, valid


def train_one(cell: Genotype, sub: Subset, setting: dict[str, int], measured: int) -> dict[str, Any]:
    """The cell trained alone as the final stage trains it, with every epoch's figures."""
    train, valid = sub.halves(setting["px"], bool(setting["all"]))
    fmt = torch.channels_last
    init = sub.seed + 1000 * setting["init"]
    net = scoring_network(cell, C=setting["C"], layers=setting["layers"], num_classes=sub.classes,
                          seed=init).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(train) * setting["epochs"])
    start = time.process_time()
    losses, accs, vloss = [], [], []
    for e in range(setting["epochs"]):
        losses.append(train_epoch(net, opt, sched, train, e, fmt))
        if e >= setting["epochs"] - measured:
            a, v = evaluate(net, valid, fmt)
            accs.append(a)
            vloss.append(v)
    return {"train_loss": losses, "valid_acc": accs, "valid_loss": vloss, "cpu_s": time.process_time() - start}


# ---------------------------------------------------------------------------------------------- judges

Record = dict[str, Any]
Judge = Callable[[list[Record]], float]  # the records of one cell (one per setting it needs) -> higher is better


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def judges(settings: list[str]) -> dict[str, tuple[list[str], Judge]]:
    """Judge name -> (the settings it reads, the function). Every setting alone gives accuracy and loss on the alpha
    half (the last epoch's, the mean of the last 3), TSE (the sum of all epochs' training losses), TSE-E (of the
    last 3); each pair of settings that differ only in their init gives the mean of the two."""
    out: dict[str, tuple[list[str], Judge]] = {}
    single: dict[str, Callable[[Record], float]] = {
        "acc3": lambda r: mean(r["valid_acc"][-3:]),
        "acc1": lambda r: r["valid_acc"][-1],
        "loss3": lambda r: -mean(r["valid_loss"][-3:]),
        "tse": lambda r: -sum(r["train_loss"]),
        "tse-e3": lambda r: -mean(r["train_loss"][-3:]),
    }
    for s in settings:
        for name, fn in single.items():
            out[f"{s} {name}"] = ([s], lambda rs, fn=fn: fn(rs[0]))
    for a, b in itertools.combinations(settings, 2):
        pa, pb = parse_setting(a), parse_setting(b)
        if {**pa, "init": 0} == {**pb, "init": 0}:
            for name in ("acc3", "loss3", "tse"):
                fn = single[name]
                out[f"{a}+{b} {name}"] = ([a, b], lambda rs, fn=fn: mean([fn(r) for r in rs]))
    return out


def report(path: Path, table: Any, dataset: str, settings: list[str], subsets: list[int]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lists = {r["subset"]: r["cells"] for r in rows if r.get("kind") == "short_list"}
    got: dict[tuple[int, str, str], Record] = {(r["subset"], r["cell"], r["setting"]): r
                                                for r in rows if r.get("kind") == "trained"}
    subsets = [s for s in subsets if s in lists]
    truth = {s: [table.accuracy(table.key(from_nb201_string(c)), dataset) for c in lists[s]] for s in subsets}
    print(f"{len(subsets)} subsets ({', '.join(map(str, subsets))}), {len(lists[subsets[0]])} finalists each; "
          f"the table's {dataset} accuracy\n")
    print("| judge | subsets | tau among finalists (min, max) | picked acc | best finalist | shortfall | "
          "picked the best | CPU-s per finalist |")
    print("|---|---|---|---|---|---|---|---|")

    def line(name: str, per_subset: dict[int, list[float]], cost: float) -> None:
        taus, picked, best, hits = [], [], [], 0
        for s, values in per_subset.items():
            acc = truth[s]
            taus.append(kendall_tau(values, acc))
            i = max(range(len(values)), key=lambda k: (values[k], -k))
            picked.append(acc[i])
            best.append(max(acc))
            hits += acc[i] == max(acc)
        n = len(per_subset)
        print(f"| {name} | {n} | {mean(taus):.2f} ({min(taus):.2f}, {max(taus):.2f}) | {mean(picked):.2f} | "
              f"{mean(best):.2f} | {mean(best) - mean(picked):.2f} | {hits}/{n} | {cost:.0f} |")

    line("the scores' order", {s: [-float(i) for i in range(len(lists[s]))] for s in subsets}, 0.0)
    agreement = []
    for a, b in itertools.combinations(settings, 2):  # one judge from two initialisations: how far it repeats
        if {**parse_setting(a), "init": 0} == {**parse_setting(b), "init": 0}:
            for name in ("acc3", "tse"):
                taus = []
                for s in subsets:
                    ra = [got.get((s, c, a)) for c in lists[s]]
                    rb = [got.get((s, c, b)) for c in lists[s]]
                    if all(ra) and all(rb) and (name == "tse" or ra[0]["valid_acc"]):  # type: ignore[index]
                        fn = judges([a])[f"{a} {name}"][1]
                        taus.append(kendall_tau([fn([r]) for r in ra], [fn([r]) for r in rb]))  # type: ignore[list-item]
                if taus:
                    agreement.append(f"{a} and {b}, {name}: tau {mean(taus):.2f} over {len(taus)} subsets")
    for name, (needs, fn) in judges(settings).items():
        per: dict[int, list[float]] = {}
        cost = []
        for s in subsets:
            recs = [[got.get((s, c, n)) for n in needs] for c in lists[s]]
            if all(r is not None for rs in recs for r in rs):
                per[s] = [fn(rs) for rs in recs]  # type: ignore[arg-type]
                cost += [sum(r["cpu_s"] for r in rs) for rs in recs]  # type: ignore[index]
        if per:
            line(name, per, mean(cost))
    if agreement:
        print("\nThe same judge from two initialisations, Kendall's tau between them among the finalists:")
        for a in agreement:
            print(f"- {a}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="image folder (DIR/train/<class>/...)")
    p.add_argument("--dataset", default="cifar10", help="the table's data set to judge by: cifar10, cifar100, "
                                                        "ImageNet16-120")
    p.add_argument("--subset-seeds", default="0,1,2,3,4", help="comma-separated search seeds")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--pool", type=int, default=1000, help="distinct random cells scored")
    p.add_argument("--finalists", type=int, default=12, help="the best cells of the pool that are trained")
    p.add_argument("--settings", default="e12", help="comma-separated eE[:sS][:rR][:cC][:lL]")
    p.add_argument("--measured", type=int, default=3, help="last epochs measured on the alpha half")
    p.add_argument("--out", required=True, help="JSON-lines file of the results, read back and extended")
    p.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th piece, from the i-th")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="print the judges' table from --out and stop")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    for s in settings:
        parse_setting(s)
    subsets = [int(s) for s in args.subset_seeds.split(",")]
    out = Path(args.out)
    if args.report:
        report(out, load_benchmark("table"), args.dataset, settings, subsets)
        return 0
    shard, shards = (int(v) for v in args.shard.split("/"))
    data = load_image_folder(Path(args.data).expanduser(), "train", 32)
    out.parent.mkdir(parents=True, exist_ok=True)
    piece = 0
    for seed in subsets:
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        sub = Subset(data, seed, args.images)
        lists = [r["cells"] for r in rows if r.get("kind") == "short_list" and r["subset"] == seed]
        if lists and len(lists[0]) >= args.finalists:
            cells = [from_nb201_string(c) for c in lists[0][:args.finalists]]
        else:
            print(f"subset {seed}: scoring {args.pool} cells", flush=True)
            cells = sub.short_list(args.pool, args.finalists)
            if shard == 0:
                with out.open("a") as f:
                    f.write(json.dumps({"kind": "short_list", "subset": seed,
                                        "cells": [to_nb201_string(g) for g in cells]}) + "\n")
        done = {(r["cell"], r["setting"]) for r in rows if r.get("kind") == "trained" and r["subset"] == seed}
        for setting in settings:
            for g in cells:
                piece += 1
                arch = to_nb201_string(g)
                if (piece - 1) % shards != shard or (arch, setting) in done:
                    continue
                rec = train_one(g, sub, parse_setting(setting), args.measured)
                with out.open("a") as f:
                    f.write(json.dumps({"kind": "trained", "subset": seed, "cell": arch, "setting": setting,
                                        **rec}) + "\n")
                print(f"subset {seed} {setting} {arch}: acc {rec['valid_acc'][-1]:.2f} "
                      f"({rec['cpu_s']:.0f} CPU-s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
