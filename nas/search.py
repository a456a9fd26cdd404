"""run_search: first-order bilevel architecture search (DARTS, Liu et al. 2019, Eq. 3-4 with xi = 0),
with GDAS (Dong & Yang, CVPR 2019) or DARTS mixing. Read top to bottom: setup, data, supernet and
optimizers, then one loop over epochs of alternating weight and alpha steps.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.config import SearchConfig, UserError, dump_yaml
from nas.data import Batches, bilevel_split, channel_stats, load_dataset
from nas.mixing import create_mixer
from nas.runlog import RunLog, prepare_run_dir
from nas.spaces import get_space
from nas.supernet import Supernet, build_supernet


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"run.device={name!r} but no CUDA device is available; valid here: auto, cpu")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"run.device={name!r} but there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def weight_step(model: Supernet, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                weights: list[nn.Parameter], grad_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the weights (train half); alpha is frozen, so no alpha gradient is computed."""
    model.set_step("weights")
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(weights, grad_clip)
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def alpha_step(model: Supernet, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on alpha (valid half); the weights are frozen, so no weight gradient is computed."""
    model.set_step("alpha")
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def run_search(cfg: SearchConfig, name: str = "search") -> Path:
    """Search an architecture as ``cfg`` says; returns the run directory (genotype.json is the result)."""
    # ---- setup
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.seed, cfg.run.deterministic)
    run_dir = prepare_run_dir(cfg.run.dir, name, cfg.run.overwrite)
    log = RunLog(run_dir)
    log.write_text("config.yaml", dump_yaml(cfg))

    # ---- data: the training set only, split into a weight half and an alpha half; search never reads test
    data = load_dataset(cfg.data, "train")
    mean, std = channel_stats(data.images)
    w_idx, a_idx = bilevel_split(len(data), cfg.data.train_portion, cfg.seed, cfg.data.subset)
    common = dict(batch_size=cfg.data.batch_size, mean=mean, std=std, device=device, augment=cfg.data.augment,
                  cutout=cfg.data.cutout)
    train = Batches(data, w_idx, seed=cfg.seed, **common)  # type: ignore[arg-type]
    valid = Batches(data, a_idx, seed=cfg.seed + 1, **common)  # type: ignore[arg-type]
    num_classes, in_channels = len(data.classes), data.images.shape[1]
    del data
    steps = min(len(train), len(valid))

    # ---- supernet and the two optimizers
    s = cfg.search
    mixer = create_mixer(s.mixer, tau_max=s.tau_max, tau_min=s.tau_min, schedule=s.tau_schedule)
    space = get_space(cfg.model.space)
    if cfg.model.ops is not None:
        space = dataclasses.replace(space, ops=cfg.model.ops)
    model = build_supernet(space, C=cfg.model.C, layers=cfg.model.layers, num_classes=num_classes,
                           mixer=mixer, in_channels=in_channels, stem_multiplier=cfg.model.stem).to(device)
    model.train()
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                            weight_decay=s.weight_decay)
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=s.epochs, eta_min=s.lr_min)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=s.arch_lr, betas=s.arch_betas,
                             weight_decay=s.arch_weight_decay)
    log.print(f"run directory {run_dir}")
    log.print(f"{cfg.data.name}: {train.num_images} images for weight steps, {valid.num_images} for alpha steps, "
              f"{num_classes} classes, {tuple(train.images.shape[1:])} per image; device {device}")
    log.print(f"{s.mixer} search in the {cfg.model.space} space: C={cfg.model.C}, layers={cfg.model.layers}, "
              f"{sum(p.numel() for p in weights) / 1e6:.2f}M weights, {steps} steps of 2 x {cfg.data.batch_size} "
              f"images per epoch, {s.epochs} epochs")

    # ---- the bilevel loop
    for epoch in range(s.epochs):
        mixer.set_epoch(epoch, s.epochs)
        lr = w_sched.get_last_lr()[0]
        sums = torch.zeros(4, device=device)  # train loss sum, train correct, valid loss sum, valid correct
        seen_w = seen_a = 0
        t0 = time.perf_counter()
        batches = zip(train.epoch(epoch), valid.epoch(epoch), strict=False)  # the shorter half sets the length
        for step, ((xw, yw), (xa, ya)) in enumerate(batches, start=1):
            if s.order == "alpha_first":
                a_loss, a_correct = alpha_step(model, xa, ya, a_opt)
                w_loss, w_correct = weight_step(model, xw, yw, w_opt, weights, s.grad_clip)
            else:
                w_loss, w_correct = weight_step(model, xw, yw, w_opt, weights, s.grad_clip)
                a_loss, a_correct = alpha_step(model, xa, ya, a_opt)
            sums += torch.stack([w_loss * len(yw), w_correct, a_loss * len(ya), a_correct])
            seen_w, seen_a = seen_w + len(yw), seen_a + len(ya)
            if cfg.run.log_every and step % cfg.run.log_every == 0:
                t_loss, _, v_loss, _ = sums.tolist()
                log.print(f"  epoch {epoch + 1} step {step}/{steps}  train loss {t_loss / seen_w:.3f}  "
                          f"valid loss {v_loss / seen_a:.3f}")
        w_sched.step()
        elapsed = time.perf_counter() - t0

        # ---- end of epoch: metrics, alpha and the genotype it stands for
        t_loss, t_correct, v_loss, v_correct = sums.tolist()
        genotype = model.genotype(s.derive)
        record = {"epoch": epoch + 1, "train_loss": t_loss / seen_w, "train_acc": 100 * t_correct / seen_w,
                  "valid_loss": v_loss / seen_a, "valid_acc": 100 * v_correct / seen_a, "tau": mixer.tau,
                  "lr": lr, "time_s": elapsed, "images_per_s": (seen_w + seen_a) / elapsed, "steps": steps}
        log.append("metrics.jsonl", record)
        log.append("genotypes.jsonl", {"epoch": epoch + 1, "genotype": genotype.to_dict()})
        log.append("alpha.jsonl", {"epoch": epoch + 1, **{t: a.detach().cpu().tolist()
                                                          for t, a in model.alpha.items()}})
        tau = "" if mixer.tau is None else f"  tau {mixer.tau:.2f}"
        log.print(f"epoch {epoch + 1}/{s.epochs}  train loss {record['train_loss']:.3f} acc {record['train_acc']:.1f}%"
                  f"  valid loss {record['valid_loss']:.3f} acc {record['valid_acc']:.1f}%{tau}  lr {lr:.4f}  "
                  f"{elapsed:.1f}s  {record['images_per_s']:.0f} img/s")
        log.print(f"  genotype {genotype}")

    log.write_text("genotype.json", genotype.to_json())
    log.print(f"done: genotype written to {run_dir / 'genotype.json'}")
    return run_dir
