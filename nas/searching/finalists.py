"""The final stage of a search: a short list of cells, each trained alone, briefly, in a small network, ranked by how
fast it trains or how well it does on the alpha half, with successive halving (Jamieson & Talwalkar, AISTATS 2016):
every rung keeps the best 1/eta of its cells and trains them eta times as long, until fewer than 2 * eta are left;
the last rung's best wins. With eta above half the cells there is one rung: every cell trains to the end.

A cell is ranked by the sum over its epochs so far of the epoch's mean training loss (TSE, the training-speed
estimate of Ru et al., NeurIPS 2021, Eq. 3: lower is better), or by its accuracy or loss on the alpha half after
its last epoch, or averaged over its last ``average`` epochs (on a few thousand images an epoch's figure moves by
about a point from one epoch to the next; the end of the schedule averaged is steadier). Every cell trains on the
same batches in the same order, from the same initialisation seed, on one cosine learning-rate schedule over the
last rung's epochs, so cells stopped at a rung have seen exactly what the survivors saw up to it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas.data.pipeline import Batches
from nas.searching.zerocost import scoring_network
from nas.space.derivation import neighbours
from nas.space.genotype import Genotype
from nas.space.spaces import get_space, spaces_where
from nas.text import count

RANKED_BY = {"tse": "training speed (the sum of the epochs' training losses)", "accuracy": "validation accuracy",
             "loss": "validation loss"}
RANKS = tuple(RANKED_BY)


@dataclass
class Finalist:
    genotype: Genotype
    train_loss: list[float] = field(default_factory=list)  # per epoch, the mean over its images
    # per epoch: (accuracy %, mean loss) on the alpha half, None for an epoch whose figures no rank reads
    valid: list[tuple[float, float] | None] = field(default_factory=list)
    out_at: int | None = None  # the rung (1-based) it was dropped after; None: the winner
    round: int = 0  # the local search's round that trained it (0: the short list)

    def key(self, rank: str, average: int = 1) -> float:
        """Lower is better."""
        if rank == "tse":
            return sum(self.train_loss)
        last = [v for v in self.valid[-average:] if v is not None]
        acc, loss = (sum(col) / len(last) for col in zip(*last, strict=True))
        return -acc if rank == "accuracy" else loss

    def record(self) -> dict[str, Any]:
        return {"genotype": str(self.genotype), "epochs": len(self.train_loss), "train_loss": self.train_loss,
                "tse": sum(self.train_loss), "valid_acc": [v and v[0] for v in self.valid],
                "valid_loss": [v and v[1] for v in self.valid], "out_after_rung": self.out_at,
                "local_round": self.round}


def rungs(cells: int, epochs: int, eta: int) -> list[tuple[int, int]]:
    """(cells trained, epochs each has had by its end) per rung: cells / eta^r cells at epochs / eta^(R-1-r) epochs
    (at least 1), down to the last rung of fewer than eta * 2 cells."""
    counts = [cells]
    while counts[-1] >= 2 * eta:
        counts.append(counts[-1] // eta)
    return [(n, max(1, epochs // eta ** (len(counts) - 1 - r))) for r, n in enumerate(counts)]


@dataclass
class Recipe:
    """How a finalist trains: SGD with Nesterov momentum, cosine from ``lr`` to 0 over ``steps``, gradients clipped
    to norm 5 per network."""

    lr: float
    momentum: float
    weight_decay: float
    steps: int
    memory_format: torch.memory_format

    def optimizer(self, params: Any) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0,
                              weight_decay=self.weight_decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                train: Batches, epoch: int, memory_format: torch.memory_format) -> float:
    """One epoch of ``net`` on ``train`` (SGD with ``opt``, ``sched`` stepped per batch); its mean training loss."""
    net.train()
    total, n = torch.zeros((), dtype=torch.float64, device=train.device), 0
    for x, y in train.epoch(epoch):
        logits = net(x.contiguous(memory_format=memory_format))[0]
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        total += loss.detach() * len(y)
        n += len(y)
    return float(total) / n


@torch.no_grad()
def evaluate(net: nn.Module, valid: Batches, memory_format: torch.memory_format) -> tuple[float, float]:
    """(accuracy %, mean loss) of ``net`` on every image of ``valid``."""
    net.eval()
    correct = torch.zeros((), device=valid.device)
    loss = torch.zeros((), dtype=torch.float64, device=valid.device)
    for x, y in valid.epoch(0):
        logits = net(x.contiguous(memory_format=memory_format))[0]
        correct += (logits.argmax(1) == y).sum()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
    return 100 * float(correct) / valid.num_images, float(loss) / valid.num_images


class OneByOne:
    """Finalists trained one after another, each network with its own optimiser (any space)."""

    def __init__(self, nets: list[nn.Module], recipe: Recipe):
        self.nets, self.recipe = nets, recipe
        self.optims = [recipe.optimizer(n.parameters()) for n in nets]

    def train_epoch(self, train: Batches, epoch: int) -> list[float]:
        return [train_epoch(n, opt, sched, train, epoch, self.recipe.memory_format)
                for n, (opt, sched) in zip(self.nets, self.optims, strict=True)]

    def evaluate(self, valid: Batches) -> list[tuple[float, float]]:
        return [evaluate(n, valid, self.recipe.memory_format) for n in self.nets]

    def keep(self, which: Sequence[int]) -> OneByOne:
        out = copy.copy(self)
        out.nets, out.optims = [self.nets[i] for i in which], [self.optims[i] for i in which]
        return out


class Together:
    """NAS-Bench-201 finalists trained as one module (nas.space.stacked): each network sees the same batches, and
    its gradient, its clipping and its SGD step are those it would have alone."""

    def __init__(self, nets: list[nn.Module], recipe: Recipe, momentum: list[dict[str, torch.Tensor]] | None = None,
                 schedule: dict[str, Any] | None = None):
        from nas.space.stacked import StackedNB201

        self.nets, self.recipe = nets, recipe
        device = next(nets[0].parameters()).device
        self.model = StackedNB201(nets).to(device).to(memory_format=recipe.memory_format)  # type: ignore[arg-type]
        self.opt, self.sched = recipe.optimizer(self.model.parameters())
        if schedule is not None:  # survivors of a rung go on where the schedule stood
            self.sched.load_state_dict(schedule)
            for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr(), strict=True):
                group["lr"] = lr
        if momentum is not None:
            joined = self.model.join(momentum)
            for name, p in self.model.named_parameters():
                self.opt.state[p]["momentum_buffer"] = joined[name].to(p.device)

    def train_epoch(self, train: Batches, epoch: int) -> list[float]:
        from nas.space.stacked import clip_grad_norms

        self.model.train()
        K, fmt = self.model.K, self.recipe.memory_format
        total, n = torch.zeros(K, dtype=torch.float64, device=train.device), 0
        for x, y in train.epoch(epoch):
            logits = self.model(x.contiguous(memory_format=fmt))  # (B, K, classes)
            losses = nn.functional.cross_entropy(logits.transpose(1, 2), y[:, None].expand(-1, K),
                                                 reduction="none").mean(0)  # (K,) each network's mean loss
            self.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            clip_grad_norms(self.model, 5.0)
            self.opt.step()
            self.sched.step()
            total += losses.detach() * len(y)
            n += len(y)
        return [float(v) / n for v in total]

    @torch.no_grad()
    def evaluate(self, valid: Batches) -> list[tuple[float, float]]:
        self.model.eval()
        K = self.model.K
        correct = torch.zeros(K, device=valid.device)
        loss = torch.zeros(K, dtype=torch.float64, device=valid.device)
        for x, y in valid.epoch(0):
            logits = self.model(x.contiguous(memory_format=self.recipe.memory_format))
            correct += (logits.argmax(2) == y[:, None]).sum(0)
            loss += nn.functional.cross_entropy(logits.transpose(1, 2), y[:, None].expand(-1, K),
                                                reduction="none").sum(0)
        return [(100 * float(c) / valid.num_images, float(v) / valid.num_images) for c, v in zip(correct, loss,
                                                                                                   strict=True)]

    def keep(self, which: Sequence[int]) -> Together:
        """The finalists ``which`` as a new stack, with their weights, statistics and momentum."""
        self.model.write_back(self.nets)  # type: ignore[arg-type]
        buffers = {name: self.opt.state[p]["momentum_buffer"] for name, p in self.model.named_parameters()
                   if "momentum_buffer" in self.opt.state[p]}
        momentum = self.model.split(buffers) if buffers else None
        return Together([self.nets[i] for i in which], self.recipe,
                        [momentum[i] for i in which] if momentum else None, self.sched.state_dict())


def successive_halving(cells: Sequence[Genotype], train: Batches, valid: Batches | None, *, C: int, layers: int,
                       num_classes: int, epochs: int, eta: int = 2, rank: str = "tse", average: int = 1,
                       lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                       inits: int = 1, together: bool = False,
                       memory_format: torch.memory_format = torch.contiguous_format,
                       say: Callable[[str], None] = print,
                       keep: Callable[[list[Finalist]], None] | None = None) -> tuple[Genotype, list[dict[str, Any]]]:
    """The cell of ``cells`` (best first by the stage before) that wins the successive halving, and every cell's
    record (its training losses, validation figures, the rung it was dropped after). With rank=accuracy or loss, a
    cell is measured on ``valid`` after each of the last ``average`` epochs of each rung it reaches. ``inits``: each
    cell trains from that many initialisations (seeds ``seed``, ``seed + 1000``, ...) and its figures are their
    means. ``together``: train the cells as one module (NAS-Bench-201 cells only), with the same figures. ``keep``
    receives the Finalists themselves."""
    if rank not in RANKS:
        raise ValueError(f"unknown rank {rank!r}; valid: {', '.join(RANKS)}")
    if rank != "tse" and valid is None:
        raise ValueError(f"rank={rank} needs validation batches")
    if together and not all(get_space(g.space).stacks for g in cells):
        raise ValueError("only NAS-Bench-201 cells train together (the spaces whose networks stack: "
                         f"{spaces_where(lambda s: s.stacks)})")
    plan = rungs(len(cells), epochs, eta)
    recipe = Recipe(lr, momentum, weight_decay, len(train) * plan[-1][1], memory_format)
    nets = [scoring_network(g, C=C, layers=layers, num_classes=num_classes, in_channels=train.images.shape[1],
                            seed=seed + 1000 * i).to(train.device).to(memory_format=memory_format)
            for g in cells for i in range(inits)]  # each cell's initialisations side by side
    group: OneByOne | Together = (Together if together else OneByOne)(nets, recipe)
    finalists = [Finalist(g) for g in cells]
    over = f" averaged over the last {count(average, 'epoch')}" if average > 1 and rank != "tse" else ""
    how = "together as one module" if together else "alone"
    each = f", each from {inits} initialisations (their mean)" if inits > 1 else ""
    say(f"final stage: {count(len(cells), 'cell')} trained {how}{each} (C={C}, {count(layers, 'cell')} per stage, "
        f"{train.num_images} images of {train.images.shape[-1]} px), ranked by {RANKED_BY[rank]}{over}; "
        "rungs of " + ", ".join(f"{count(n, 'cell')} to epoch {e}" for n, e in plan))

    def per_cell(values: list[Any]) -> list[Any]:  # the figures of each cell's inits -> their mean
        runs = [values[j * inits:(j + 1) * inits] for j in range(len(values) // inits)]
        return [tuple(map(statistics.fmean, zip(*r, strict=True))) if isinstance(r[0], tuple) else statistics.fmean(r)
                for r in runs]

    alive = finalists
    start = time.perf_counter()
    for r, (n, until) in enumerate(plan, start=1):
        while len(alive[0].train_loss) < until:
            for f, loss in zip(alive, per_cell(group.train_epoch(train, len(alive[0].train_loss))), strict=True):
                f.train_loss.append(loss)
            if valid is not None and rank != "tse":  # the figures the rank reads at the rung's end
                measured = len(alive[0].train_loss) > until - average
                figures = per_cell(group.evaluate(valid)) if measured else [None] * len(alive)
                for f, v in zip(alive, figures, strict=True):
                    f.valid.append(v)
        order = sorted(range(len(alive)), key=lambda i: alive[i].key(rank, average))  # stable: ties keep the order
        kept = plan[r][0] if r < len(plan) else 1
        for i in order[kept:]:
            alive[i].out_at = r
        best = alive[order[0]]
        say(f"  rung {r}/{len(plan)}: {count(n, 'cell')} to epoch {until}, {time.perf_counter() - start:.0f}s; best "
            f"{describe(best, rank, average)}  {best.genotype}")
        if r < len(plan):
            group = group.keep([j * inits + i for j in order[:kept] for i in range(inits)])
        alive = [alive[i] for i in order[:kept]]
    if keep is not None:
        keep(finalists)
    return alive[0].genotype, [f.record() for f in finalists]


def halving(cells: Sequence[Genotype], train: Batches, valid: Batches | None, **kwargs: Any
            ) -> tuple[Finalist, list[Finalist]]:
    """successive_halving's winner and finalists as Finalists (their figures, for comparison with other cells
    trained alike)."""
    out: list[list[Finalist]] = []
    successive_halving(cells, train, valid, keep=out.append, **kwargs)
    finalists = out[0]
    return next(f for f in finalists if f.out_at is None), finalists


def describe(f: Finalist, rank: str, average: int = 1) -> str:
    if rank == "tse":
        return f"TSE {sum(f.train_loss):.3f} (last epoch's loss {f.train_loss[-1]:.3f})"
    over = f" (mean of the last {average} epochs)" if average > 1 else ""
    return f"validation accuracy {-f.key('accuracy', average):.2f}%, loss {f.key('loss', average):.3f}{over}"


def local_search(winner: Finalist, finalists: list[Finalist], space: Any, train: Batches, valid: Batches | None, *,
                 rounds: int, size: int, rank: str, average: int,
                 order: Callable[[list[Genotype]], list[Genotype]] | None = None,
                 say: Callable[[str], None] = print, **train_args: Any) -> tuple[Finalist, list[Finalist]]:
    """Hill climbing from the final stage's winner, one op at a time: each round trains the best cell's one-edge
    neighbours that no stage has trained (all of them, or the first ``size`` in ``order``) exactly as the
    finalists trained, and moves to the best of them if it beats the best so far by the same rank; it stops at a
    cell none of whose neighbours beats it, or after ``rounds`` rounds. Returns the best cell and every cell
    trained in the search."""
    best = winner
    seen = {str(f.genotype) for f in finalists}
    trained: list[Finalist] = []
    for r in range(1, rounds + 1):
        fresh = [g for g in neighbours(space, best.genotype) if str(g) not in seen]
        fresh = (order(fresh) if order is not None else fresh)[:size or None]
        if not fresh:
            say(f"local search, round {r}: every neighbour of the best cell has been trained")
            break
        seen |= {str(g) for g in fresh}
        say(f"local search, round {r}/{rounds}: {count(len(fresh), 'neighbour')} of {best.genotype}")
        challenger, done = halving(fresh, train, valid, eta=len(fresh) + 1, rank=rank, average=average,
                                   say=lambda _: None, **train_args)
        for f in done:
            f.round = r
        trained += done
        better = challenger.key(rank, average) < best.key(rank, average)
        say(f"  best neighbour {describe(challenger, rank, average)}  {challenger.genotype}: "
            + ("it is the new best" if better else f"the best stays {describe(best, rank, average)}"))
        if not better:
            break
        best = challenger
    return best, trained
