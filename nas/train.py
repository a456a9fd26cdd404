"""run_train: train a genotype's network from scratch and test it, the way the papers report results (the DARTS
evaluation recipe, Liu et al. 2019, Sec. 3.2: SGD with a cosine learning rate, an auxiliary loss, drop-path growing
linearly over training, cutout). Read top to bottom: setup, data, network and optimizer, one loop over epochs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.config import TrainConfig, UserError, dump_yaml, to_dict
from nas.data import Batches, channel_stats, dataset_info, load_dataset
from nas.genotype import Genotype
from nas.network import build_network, count_flops, count_parameters
from nas.runlog import RunLog, prepare_run_dir
from nas.search import resolve_device, seed_everything


def check_genotype_fits(cfg: TrainConfig, genotype: Genotype) -> None:
    space = cfg.model.space
    if space is not None and genotype.space != space:
        raise UserError(f"the genotype is of the {genotype.space} space but this recipe trains model.space={space} "
                        f"networks; use a recipe for {genotype.space} (or model.space=null)")
    if genotype.space == "nb201" and (cfg.model.auxiliary_weight or cfg.model.drop_path):
        raise UserError("model.auxiliary_weight and model.drop_path apply only to darts-space networks; set both to 0 "
                        "for an nb201 genotype")


def make_network(cfg: TrainConfig, genotype: Genotype, num_classes: int, in_channels: int) -> nn.Module:
    return build_network(genotype, C=cfg.model.C, layers=cfg.model.layers, num_classes=num_classes,
                         auxiliary=cfg.model.auxiliary_weight > 0, in_channels=in_channels,
                         stem_multiplier=cfg.model.stem_multiplier)


def summarize(cfg: TrainConfig, genotype: Genotype) -> dict[str, Any]:
    """Parameters and multiply-adds of the network, built on the CPU and never trained."""
    check_genotype_fits(cfg, genotype)
    num_classes, in_channels, size = dataset_info(cfg.data)
    model = make_network(cfg, genotype, num_classes, in_channels)
    return {"params": count_parameters(model), "flops": count_flops(model, in_channels, size),
            "space": genotype.space, "C": cfg.model.C, "layers": cfg.model.layers, "num_classes": num_classes,
            "image_size": size}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """(mean loss, top-1 accuracy in %) over every image of ``batches``, in evaluation mode."""
    model.eval()
    sums = torch.zeros(2, device=batches.device)
    for x, y in batches.epoch(0):
        logits, _ = model(x)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()])
    model.train()
    loss, correct = sums.tolist()
    return loss / batches.num_images, 100 * correct / batches.num_images


def run_train(cfg: TrainConfig, genotype: Genotype, name: str = "train") -> dict[str, Any]:
    """Train ``genotype``'s network as ``cfg`` says; writes results.json in the run directory and returns it."""
    # ---- setup
    check_genotype_fits(cfg, genotype)
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.seed, cfg.run.deterministic)
    run_dir = prepare_run_dir(cfg.run.dir, name, cfg.run.overwrite)
    log = RunLog(run_dir)
    log.write_text("config.yaml", dump_yaml(cfg))
    log.write_text("genotype.json", genotype.to_json())

    # ---- data: the whole training split (or data.subset of it) for training, the test split for testing
    train_set = load_dataset(cfg.data, "train")
    test_set = load_dataset(cfg.data, "test")
    mean, std = channel_stats(train_set.images)
    subset = None
    if cfg.data.subset:
        subset = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.data.subset]
    train = Batches(train_set, subset, batch_size=cfg.data.batch_size, mean=mean, std=std, device=device,
                    seed=cfg.seed, augment=cfg.data.augment, cutout=cfg.data.cutout)
    test = Batches(test_set, batch_size=max(cfg.data.batch_size, 256), mean=mean, std=std, device=device,
                   shuffle=False, drop_last=False)
    num_classes, in_channels, size = len(train_set.classes), train_set.images.shape[1], train_set.images.shape[-1]
    del train_set, test_set

    # ---- network and optimizer
    model = make_network(cfg, genotype, num_classes, in_channels).to(device)
    params, flops = count_parameters(model), count_flops(model, in_channels, size)
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                          weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=t.lr_min)
    aux_weight = cfg.model.auxiliary_weight
    log.print(f"run directory {run_dir}")
    log.print(f"genotype {genotype}")
    log.print(f"{cfg.data.name}: {train.num_images} training images, {test.num_images} test images, {num_classes} "
              f"classes; {params / 1e6:.3f}M parameters, {flops / 1e6:.1f}M multiply-adds per image; device {device}")

    # ---- the training loop
    best_acc, best_epoch, test_loss, test_acc = -1.0, 0, float("nan"), float("nan")
    start = time.perf_counter()
    train_time = 0.0
    seen = 0
    for epoch in range(t.epochs):
        model.drop_path_prob = cfg.model.drop_path * epoch / t.epochs  # type: ignore[assignment]
        lr = sched.get_last_lr()[0]
        sums = torch.zeros(2, device=device)  # loss sum, correct
        n = 0
        t0 = time.perf_counter()
        for x, y in train.epoch(epoch):
            logits, aux = model(x)
            loss = F.cross_entropy(logits, y)
            total = loss if aux is None else loss + aux_weight * F.cross_entropy(aux, y)
            opt.zero_grad(set_to_none=True)
            total.backward()
            if t.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum()])
            n += len(y)
        sched.step()
        elapsed = time.perf_counter() - t0
        train_time += elapsed
        seen += n
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sums[0].item() / n,
                                  "train_acc": 100 * sums[1].item() / n, "lr": lr,
                                  "drop_path": model.drop_path_prob, "time_s": elapsed, "images_per_s": n / elapsed}
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            test_loss, test_acc = evaluate(model, test)
            if test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch + 1
            record.update(test_loss=test_loss, test_acc=test_acc)
        log.append("metrics.jsonl", record)
        tested = f"  test loss {test_loss:.3f} acc {test_acc:.2f}%" if "test_acc" in record else ""
        log.print(f"epoch {epoch + 1}/{t.epochs}  train loss {record['train_loss']:.3f} acc "
                  f"{record['train_acc']:.2f}%{tested}  lr {lr:.4f}  {elapsed:.1f}s  "
                  f"{record['images_per_s']:.0f} img/s")

    results = {"final_test_acc": test_acc, "best_test_acc": best_acc, "best_epoch": best_epoch,
               "final_test_loss": test_loss, "params": params, "flops": flops, "epochs": t.epochs,
               "wall_time_s": time.perf_counter() - start, "images_per_s": seen / train_time, "seed": cfg.seed,
               "device": str(device), "genotype": genotype.to_dict(), "config": to_dict(cfg)}
    log.write_json("results.json", results)
    log.print(f"done: test accuracy {test_acc:.2f}% (best {best_acc:.2f}% at epoch {best_epoch}); "
              f"results in {run_dir / 'results.json'}")
    return results


def run_repeats(cfg: TrainConfig, genotype: Genotype, seeds: list[int], name: str = "train") -> dict[str, Any]:
    """Train once per seed, each in <run.dir>/seed-<s>; writes summary.json with mean and std over the runs."""
    parent = prepare_run_dir(cfg.run.dir, name, cfg.run.overwrite)
    runs = []
    for seed in seeds:
        sub = dataclasses.replace(cfg, seed=seed, run=dataclasses.replace(cfg.run, dir=str(parent / f"seed-{seed}")))
        runs.append(run_train(sub, genotype, name))

    def stats(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {"seeds": seeds, "final_test_acc": stats("final_test_acc"), "best_test_acc": stats("best_test_acc"),
               "params": runs[0]["params"], "flops": runs[0]["flops"], "runs": [f"seed-{s}" for s in seeds],
               "genotype": genotype.to_dict()}
    RunLog(parent).write_json("summary.json", summary)
    final = summary["final_test_acc"]
    print(f"{len(seeds)} runs: final test accuracy {final['mean']:.2f} ± {final['std']:.2f}% (sample std); "
          f"summary in {Path(parent) / 'summary.json'}", flush=True)
    return summary
