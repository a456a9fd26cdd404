"""run_search: bilevel architecture search (DARTS, Liu et al. 2019, Eq. 3-4: first order, or second order with
search.unrolled), with GDAS (Dong & Yang, CVPR 2019), DARTS or SNAS mixing. Read top to bottom: setup (or resume),
data, supernet and optimizers, then one loop over epochs of alternating weight and alpha steps, checkpointing as it
goes.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nas.bench201 import describe_epoch, epoch_lookup, load_benchmark
from nas.data.pipeline import SearchData, batch_seed, bilevel_split, load_dataset, split_data
from nas.errors import UserError
from nas.loader import dump_yaml
from nas.run.distributed import Dist, check_global_batch, use_global_batchnorm
from nas.run.files import ALPHA, BUDGET, FINAL, GENOTYPE, GENOTYPES, METRICS
from nas.run.runlog import Board, peak_memory_mib
from nas.run.runtime import EpochMeter, Loop, Run, finished, removed_if_unsaved, resolve_device
from nas.run.steps import autocast, backward_step, grad_scaler
from nas.searching.budget import fmt, make_budget
from nas.searching.collapse import describe, dominance_warning, edge_stats
from nas.searching.derive import derive_genotype, fit_budget, set_prior
from nas.searching.mixing import Mixer, create_mixer, mixer_options
from nas.searching.supernet import Supernet, build_supernet
from nas.searching.unrolled import unrolled_alpha_backward
from nas.space.derivation import alpha_rule
from nas.space.spaces import get_space, search_space
from nas.text import count

if TYPE_CHECKING:  # the recipe's schema, read here as a type only: at run time nas.config sits above the search code
    from nas.config import SearchConfig, SearchOptions

RECORDS = (METRICS, GENOTYPES, ALPHA)  # one line per finished epoch
NO_AMP = contextlib.nullcontext()
ONE = Dist()  # a single process: no communication


def zero_unsampled(weights: list[nn.Parameter], opt: torch.optim.Optimizer) -> None:
    """A zero gradient for every weight without one that ``opt`` has stepped before (it holds state for it)."""
    for p in weights:
        if p.grad is None and opt.state.get(p):
            p.grad = torch.zeros_like(p)


def weight_step(model: Supernet, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                weights: list[nn.Parameter], grad_clip: float, amp: Any = NO_AMP,
                scaler: torch.amp.GradScaler | None = None, unsampled: str = "none",
                dist: Dist = ONE) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the weights (train half); alpha is frozen, so no alpha gradient is computed. With
    ``unsampled="zero"``, weights without a gradient that the optimizer has stepped before get a zero one, as
    ``zero_grad()`` left them under PyTorch 1.x: momentum and weight decay still move them. In a distributed run
    the gradients that exist are averaged across processes before clipping."""
    model.set_step("weights")
    with amp:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
    fill = (lambda: zero_unsampled(weights, opt)) if unsampled == "zero" else None
    backward_step(loss, opt, scaler, weights, grad_clip, before_step=fill, reduce=dist.average_gradients)
    return loss.detach(), (logits.argmax(1) == y).sum()


def alpha_step(model: Supernet, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, amp: Any = NO_AMP,
               scaler: torch.amp.GradScaler | None = None, frozen: bool = False,
               unrolled: dict[str, Any] | None = None, dist: Dist = ONE) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on alpha (valid half); the weights are frozen, so no weight gradient is computed. During the
    warm-up (``frozen``) alpha does not move either: the batch is only measured. With ``unrolled`` (the train
    batch, the weight optimizer, the weights and xi), the gradient is DARTS's second-order one
    (nas/searching/unrolled.py)."""
    if unrolled is not None and not frozen:
        loss, correct = unrolled_alpha_backward(model, valid=(x, y), **unrolled)
        reg = model.regularizer()  # the terms beyond the validation loss: their gradient adds to the unrolled one
        if reg is not None:
            model.set_step("alpha")
            reg.backward()
        opt.step()
        return loss, correct
    model.set_step("none" if frozen else "alpha")
    with amp, torch.set_grad_enabled(not frozen):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
    if not frozen:
        reg = model.regularizer()  # the mixer's own term (DrNAS's KL), if it has one; the logged loss stays the CE
        backward_step(loss if reg is None else loss + reg, opt, scaler, reduce=dist.average_gradients)
    return loss.detach(), (logits.argmax(1) == y).sum()


def bilevel_step(model: Supernet, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
                 w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer, weights: list[nn.Parameter], *,
                 order: str = "weights_first", grad_clip: float = 5.0, amp: Any = NO_AMP,
                 scaler: torch.amp.GradScaler | None = None, frozen: bool = False, xi: float | None = None,
                 unsampled: str = "none", dist: Dist = ONE) -> tuple[torch.Tensor, ...]:
    """One step of the bilevel loop: a weight step on ``train`` and an alpha step on ``valid``, in ``order``
    (weights_first: GDAS; alpha_first: DARTS). ``xi`` (the weights' learning rate) makes the alpha step second
    order. Returns (weight loss, weight correct, alpha loss, alpha correct), on the device."""
    unrolled = dict(train=train, w_opt=w_opt, weights=weights, xi=xi) if xi is not None else None

    def weights_() -> tuple[torch.Tensor, torch.Tensor]:
        return weight_step(model, *train, w_opt, weights, grad_clip, amp, scaler, unsampled, dist)

    def alpha_() -> tuple[torch.Tensor, torch.Tensor]:
        return alpha_step(model, *valid, a_opt, amp, scaler, frozen, unrolled, dist)

    if order == "alpha_first":
        a_loss, a_correct = alpha_()
        w_loss, w_correct = weights_()
    else:
        w_loss, w_correct = weights_()
        a_loss, a_correct = alpha_()
    if scaler is not None:
        scaler.update()
    return w_loss, w_correct, a_loss, a_correct


def record_epoch(cfg: SearchConfig, model: Supernet, meter: EpochMeter, epoch: int, lr: float, steps: int,
                 warm: bool, bench: Any, board: Board | None, run: Run) -> None:
    """The end of a search epoch: its metrics, the genotype alpha stands for and alpha itself, written to the run's
    records, printed, and shown in TensorBoard. Random search never steps alpha: its argmax stands for nothing, so
    it logs no genotype per epoch."""
    s, log, mixer = cfg.search, run.log, model.mixer
    elapsed = meter.elapsed()
    (t_loss, t_correct, v_loss, v_correct), (n_w, n_a) = meter.totals()
    rule = alpha_rule(s.derive)
    genotype = model.genotype(rule, s.max_skip) if s.mixer != "random" else None
    stats = edge_stats(genotype, dict(model.alpha), model.space.ops) if genotype is not None else {}
    truth = epoch_lookup(bench, genotype) if genotype is not None and bench is not None and run.dist.main else {}
    budget = model.budget
    cost: dict[str, Any] = {}
    if budget is not None:
        cost = {"expected_cost": float(budget.cost.expected(model.cost_weights(sampled=False)).detach())}
        if genotype is not None:
            cost["derived_cost"] = budget.cost.of(genotype)
    record = {"epoch": epoch + 1, "train_loss": t_loss / n_w, "train_acc": 100 * t_correct / n_w,
              "valid_loss": v_loss / n_a, "valid_acc": 100 * v_correct / n_a, "tau": mixer.tau,
              "lr": lr, "time_s": elapsed, "images_per_s": (n_w + n_a) / elapsed, "steps": steps,
              "peak_mib": peak_memory_mib(run.device), **stats, **truth, **cost}
    log.append(METRICS, record)
    if genotype is not None:
        log.append(GENOTYPES, {"epoch": epoch + 1, "genotype": genotype.to_dict()})
        log.append(ALPHA, {"epoch": epoch + 1, **{t: a.detach().cpu().tolist()
                                                          for t, a in model.alpha.items()}})
    tau = "" if mixer.tau is None else f"  tau {mixer.tau:.2f}"
    log.print(f"epoch {epoch + 1}/{s.epochs}  train loss {record['train_loss']:.3f} acc "
              f"{record['train_acc']:.1f}%  valid loss {record['valid_loss']:.3f} acc "
              f"{record['valid_acc']:.1f}%{tau}  lr {lr:.4f}  {elapsed:.1f}s  "
              f"{record['images_per_s']:.0f} img/s{'  (warm-up: alpha frozen)' if warm else ''}")
    if genotype is not None:
        log.print(f"  genotype {genotype}")
        log.print(f"  {describe(stats)}")
        if bench is not None:
            log.print(f"  NAS-Bench-201: {describe_epoch(truth)}")
    if cost:
        derived = f", this epoch's cell {fmt(cost['derived_cost'], budget.metric)}" if "derived_cost" in cost else ""
        log.print(f"  cost: expected {fmt(cost['expected_cost'], budget.metric)}{derived} (target "
                  f"{fmt(budget.target, budget.metric)})")
    if board is not None:
        board.scalars({k: v for k, v in record.items() if v is not None and math.isfinite(v)}, epoch + 1, "search")
        if genotype is not None:
            from nas.space.plot import show_alpha, show_genotype

            show_alpha(board, dict(model.alpha), model.space, epoch + 1)
            show_genotype(board, genotype, epoch + 1, images=epoch + 1 == s.epochs)


def make_supernet(cfg: SearchConfig, d: SearchData, mixer: Any, device: torch.device) -> Supernet:
    """The supernet of cfg.model for data ``d``, on ``device``."""
    space = search_space(cfg.model.space, cfg.model.ops, cfg.model.macro)
    model = build_supernet(space, C=cfg.model.C, layers=cfg.model.layers, num_classes=d.classes, mixer=mixer,
                           in_channels=d.channels, stem_multiplier=cfg.model.stem, macro=cfg.model.macro)
    if not cfg.model.bn_stats:
        drop_running_stats(model)
    return model.to(device)


def drop_running_stats(model: nn.Module) -> None:
    """Every BatchNorm of ``model`` without running statistics: it normalises by the batch's in evaluation mode too."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def setup_lines(cfg: SearchConfig, run: Run, d: SearchData, weights: list[nn.Parameter], steps: int) -> list[str]:
    """What a search prints before its first step: where it writes, the data, the supernet and the budget."""
    s, m = cfg.search, cfg.model
    macro = f" ({m.macro} network)" if m.macro != get_space(m.space).macro else ""  # not the space's own
    lines = [f"run directory {run.dir}", *d.notes,
             f"{cfg.data.name}: {d.train.num_images} images for weight steps, {d.valid.num_images} for alpha steps, "
             f"{d.classes} classes, {tuple(d.train.images.shape[1:])} per image; device {run.device}",
             f"{s.mixer} search in the {m.space} space{macro}: C={m.C}, layers={m.layers}, "
             f"{sum(p.numel() for p in weights) / 1e6:.2f}M weights, {count(steps, 'step')} of 2 x "
             f"{cfg.data.batch_size} images per epoch, {count(s.epochs, 'epoch')}"]
    if run.dist.active:
        lines.append(run.dist.describe(cfg.data.batch_size, cfg.run.sync_bn))
    return lines


def step_postfix(meter: EpochMeter, tau: float | None) -> dict[str, str]:
    """The progress line's figures so far in this epoch (this process's share)."""
    (t_l, t_c, _, v_c), (n_w, n_a) = meter.local(), meter.images
    out = {"loss": f"{t_l / n_w:.3f}", "acc": f"{100 * t_c / n_w:.1f}%", "valid": f"{100 * v_c / n_a:.1f}%",
           "img/s": f"{(n_w + n_a) / max(meter.elapsed(), 1e-9):.0f}"}
    if tau is not None:
        out["tau"] = f"{tau:.2f}"
    return out


def search_mixer(s: SearchOptions) -> Mixer:
    """The mixer that search.mixer names, given the search.* keys it takes (the config refused any other mixer's
    key set to a value of its own)."""
    return create_mixer(s.mixer, **{k: getattr(s, k) for k in mixer_options(s.mixer)})


def schedule_epoch(s: SearchOptions, mixer: Mixer, model: Supernet, epoch: int) -> None:
    """What changes from epoch to epoch besides the learning rate: tau (after the warm-up), the dropout on
    parameter-free ops and the ops the weight steps train (uniformly drawn ones with search.weight_sampling=uniform,
    or during a warm-up with search.warmup_sampling=uniform; else the mixer's). Set as each epoch starts, and for the
    last epoch again before derivation, so that a search resumed after its last epoch derives in the state that
    epoch left."""
    mixer.set_epoch(max(epoch - s.warmup_epochs, 0), s.epochs - s.warmup_epochs)
    model.set_param_free_dropout(s.param_free_dropout * (1 - epoch / max(s.epochs - 1, 1)))
    uniform = s.weight_sampling == "uniform" or (epoch < s.warmup_epochs and s.warmup_sampling == "uniform")
    model.weight_mixer = create_mixer("random") if uniform else None  # random: every op of an edge as often


# NAS-Bench-201's GDAS search (Dong & Yang, ICLR 2020; AutoDL-Projects): 250 epochs of 391 alpha steps, one per batch
# of 64 images of the 25,000-image alpha half, at alpha's Adam learning rate 3e-4
REFERENCE_ALPHA_STEPS = 250 * 391


def alpha_lr(s: SearchOptions, steps: int) -> float:
    """alpha's Adam learning rate: search.arch_lr as it stands (search.schedule=epochs), or scaled by the reference
    search's alpha steps over this run's (search.schedule=steps), so that alpha can move as far in fewer steps as
    the official schedule lets it move in 97,750."""
    if s.schedule == "epochs":
        return s.arch_lr
    return s.arch_lr * REFERENCE_ALPHA_STEPS / max(1, (s.epochs - s.warmup_epochs) * steps)


def run_search(cfg: SearchConfig, name: str = "search", *, resume: Path | None = None, quiet: bool = False) -> Path:
    """Search an architecture as ``cfg`` says, or continue the one in ``resume``; returns the run directory
    (genotype.json is the result). A finished run is left as it is; a new one stopped before its first checkpoint
    leaves nothing behind."""
    if resume is not None and finished(resume, "search", cfg.search.epochs, quiet):
        return resume
    with removed_if_unsaved():
        return search(cfg, name, resume, quiet)


def search(cfg: SearchConfig, name: str, resume: Path | None, quiet: bool) -> Path:
    """run_search's setup and loop."""
    # ---- setup: a new run directory, or the checkpoint of the run being resumed
    s = cfg.search
    world = check_global_batch(cfg.data.batch_size)  # under torchrun: checked before anything is written
    if world > 1 and s.unrolled:
        raise UserError("search.unrolled=true runs in one process only: its virtual step is not distributed")
    bench = load_benchmark(s.benchmark) if s.benchmark else None  # read before anything is written
    # ---- data: the training set only, split into a weight half and an alpha half; search never reads test.
    # Read before the run directory exists, so that a refused data set leaves nothing behind
    data = load_dataset(cfg.data, "train")
    halves = bilevel_split(len(data), cfg.data.train_portion, cfg.seed, cfg.data.subset)  # or refused: an empty half
    budget_notes: list[str] = []
    budget = make_budget(cfg, len(data.classes), data.images.shape[1], data.images.shape[-1],
                         resolve_device(cfg.run.device), budget_notes.append)  # refused before anything is written
    run = Run(cfg.run, cfg.seed, name, "search", dump_yaml(cfg), resume, quiet)
    device, log, state, dist = run.device, run.log, run.state, run.dist

    d = split_data(cfg, data, halves, run)
    del data
    train, valid = d.train, d.valid
    steps = min(len(train), len(valid))

    # ---- supernet and the two optimizers
    mixer = search_mixer(s)
    model = make_supernet(cfg, d, mixer, device)
    model.beta_decay = s.beta_decay
    model.budget = budget
    if cfg.run.sync_bn and dist.active:
        use_global_batchnorm(model)
    dist.broadcast_parameters(model)  # the same seed built the same network; this makes sure of it
    model.generator = torch.Generator(device=device)  # seeded per step: every process draws the same sample
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    model.train()
    amp, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                            weight_decay=s.weight_decay)
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=s.epochs, eta_min=s.lr_min)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=alpha_lr(s, steps), betas=s.arch_betas,
                             weight_decay=s.arch_weight_decay)
    for line in [*setup_lines(cfg, run, d, weights, steps), *budget_notes, *([budget.describe()] if budget else [])]:
        log.print(line)
    if s.schedule == "steps" and mixer.learns_alpha:
        log.print(f"alpha's Adam at learning rate {alpha_lr(s, steps):.3g}: search.arch_lr={s.arch_lr:g} times the "
                  f"reference search's {REFERENCE_ALPHA_STEPS:,} alpha steps over this run's "
                  f"{(s.epochs - s.warmup_epochs) * steps:,} (search.schedule=steps)")

    if s.zero_cost and s.score_batch > len(valid.labels):
        log.print(f"search.score_batch={s.score_batch} is more than the {len(valid.labels)} images of the alpha half; "
                  f"the zero-cost scores read all {len(valid.labels)}")

    def score_batch() -> tuple[torch.Tensor, torch.Tensor]:
        """The batch zero-cost scores read: the first images of the alpha half (a seeded shuffle), normalised."""
        x = torch.addcmul(valid.shift, valid.images[:s.score_batch].float(), valid.scale)
        return x.contiguous(memory_format=memory_format), valid.labels[:s.score_batch]

    # ---- resume: every state the next step depends on; records after the checkpoint are redone
    if state is None and s.prior:  # a new run: alpha starts from the zero-cost prior of the user's images
        set_prior(cfg, model, score_batch(), d.classes, memory_format, log)
    objects = {"model": model, "w_opt": w_opt, "a_opt": a_opt, "w_sched": w_sched, "scaler": scaler}
    frame = Loop(run, cfg.run, s.epochs, steps, objects, RECORDS)

    # ---- the bilevel loop
    with frame:
        for epoch in frame.epochs():
            warm = epoch < s.warmup_epochs  # weights only; alpha and the tau schedule start after the warm-up
            frozen = warm or not mixer.learns_alpha  # alpha's batch is then only measured
            schedule_epoch(s, mixer, model, epoch)
            lr = w_sched.get_last_lr()[0]
            # train loss sum, train correct, valid loss sum, valid correct; weight images, alpha images
            meter, first = frame.start_epoch(epoch, sums=4, streams=2)
            batches = zip(train.epoch(epoch, first), valid.epoch(epoch, first), strict=False)
            for step, ((xw, yw), (xa, ya)) in enumerate(batches, start=first + 1):
                model.generator.manual_seed(batch_seed(cfg.seed, epoch, step, 1))  # this step's samples
                xw, xa = xw.contiguous(memory_format=memory_format), xa.contiguous(memory_format=memory_format)
                w_loss, w_correct, a_loss, a_correct = bilevel_step(
                    model, (xw, yw), (xa, ya), w_opt, a_opt, weights, order=s.order, grad_clip=s.grad_clip, amp=amp,
                    scaler=scaler, frozen=frozen, xi=float(lr) if s.unrolled else None, unsampled=s.unsampled_grads,
                    dist=dist)
                frame.check(w_loss + a_loss, step,
                            lambda: f"weight step {w_loss.item()}, alpha step {a_loss.item()}")  # noqa: B023
                meter.add([w_loss * len(yw), w_correct, a_loss * len(ya), a_correct], len(yw), len(ya))
                frame.stepped(step, lambda m: step_postfix(m, mixer.tau))
            w_sched.step()
            frame.end_epoch()

            # ---- end of epoch: metrics, alpha and the genotype it stands for, then a checkpoint
            record_epoch(cfg, model, meter, epoch, float(lr), steps, warm, bench, frame.board, run)
            frame.epoch_done()

    # ---- the result: genotype.json and drawings of its cells, and a warning if it is mostly parameter-free
    if s.epochs:  # resumed after the last epoch, the loop ran none: derive in the state the last epoch left
        schedule_epoch(s, mixer, model, s.epochs - 1)
    genotype, final = derive_genotype(cfg, model, d, score_batch, amp, memory_format, log)
    if final is not None:
        log.write_text(FINAL, json.dumps(final, indent=2) + "\n")
    derived, repaired = genotype, []
    if model.budget is not None:
        genotype, record = fit_budget(model, genotype, log)
        log.write_text(BUDGET, json.dumps(record, indent=2) + "\n")
        repaired = record["repaired"]
    from nas.space.plot import draw_cells

    if dist.main:
        draw_cells(genotype, run.dir / "cells")
    log.write_text(GENOTYPE, genotype.to_json())  # last: it marks the run finished
    warning = dominance_warning(genotype, derived, len(repaired))
    if warning:
        log.print(warning)
    run.finish()
    log.print(f"done: genotype written to {run.dir / GENOTYPE}; cell drawings in {run.dir / 'cells'}")
    return run.dir


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.searching.bilevel", "search"))
