"""run_train: train a genotype's network from scratch and test it, the way the papers report results (the DARTS
evaluation recipe, Liu et al. 2019, Sec. 3.2: SGD with a cosine learning rate, an auxiliary loss, drop-path growing
linearly over training, cutout). Read top to bottom: setup, data, network and optimizer, one loop over epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.config import TrainConfig
from nas.data.pipeline import Batches, batch_notes, channel_stats, data_notes, dataset_info, load_dataset
from nas.errors import UserError
from nas.loader import dump_yaml, to_dict
from nas.run.distributed import Dist, check_global_batch, is_main_process, use_global_batchnorm
from nas.run.files import (
    CONFIG,
    GENOTYPE,
    META,
    METRICS,
    RESULTS,
    SUMMARY,
    is_finished,
    remove_run_files,
    resume_command,
    run_kind,
    run_state,
)
from nas.run.runlog import RunLog, atomic_write_text, peak_memory_mib, prepare_run_dir, read_jsonl, record_session
from nas.run.runtime import EpochMeter, Loop, Run, finished, removed_if_unsaved
from nas.run.steps import autocast, backward_step, grad_scaler
from nas.space.genotype import Genotype, read_genotype
from nas.space.network import build_network, check_network, count_flops, count_parameters
from nas.text import count


def check_genotype_fits(cfg: TrainConfig, genotype: Genotype) -> None:
    space = cfg.model.space
    if space is not None and genotype.space != space:
        raise UserError(f"the genotype is of the {genotype.space} space but this recipe trains model.space={space} "
                        f"networks; use a recipe for {genotype.space} (or model.space=null)")
    check_network(genotype.space, layers=cfg.model.layers, auxiliary=cfg.model.auxiliary_weight > 0,
                  drop_path=cfg.model.drop_path > 0, stem_multiplier=cfg.model.stem_multiplier)


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
def evaluate(model: nn.Module, batches: Batches, amp: Any = None,
             memory_format: torch.memory_format = torch.contiguous_format, dist: Dist | None = None
             ) -> tuple[float, float]:
    """(mean loss, top-1 accuracy in %) over every image of ``batches``, in evaluation mode; in a distributed run
    each process tests its shards and the sums are added up."""
    model.eval()
    sums = torch.zeros(2, device=batches.device)
    for x, y in batches.epoch(0):
        with amp if amp is not None else contextlib.nullcontext():
            logits, _ = model(x.contiguous(memory_format=memory_format))
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()])
    model.train()
    loss, correct = (sums if dist is None else dist.sum(sums)).tolist()
    return loss / batches.num_images, 100 * correct / batches.num_images


def step_postfix(meter: EpochMeter) -> dict[str, str]:
    """The progress line's figures so far in this epoch (this process's share)."""
    (loss_sum, correct), (n,) = meter.local(), meter.images
    return {"loss": f"{loss_sum / n:.3f}", "acc": f"{100 * correct / n:.1f}%",
            "img/s": f"{n / max(meter.elapsed(), 1e-9):.0f}"}


def run_train(cfg: TrainConfig, genotype: Genotype, name: str = "train", *, resume: Path | None = None,
              quiet: bool = False, part_of: Path | None = None) -> dict[str, Any]:
    """Train ``genotype``'s network as ``cfg`` says (or continue the run in ``resume``); writes results.json in
    the run directory and returns it, with the run directory added (run_dir). A finished run is left as it is; a
    new one stopped before its first checkpoint leaves nothing behind. ``part_of``: the parent directory of the
    repeated trainings this is one of, which the run's stop messages name to continue them all."""
    if resume is not None and finished(resume, "train", cfg.train.epochs, quiet):
        return {**json.loads((resume / RESULTS).read_text()), "run_dir": str(resume)}
    with removed_if_unsaved():
        return train(cfg, genotype, name, resume, quiet, part_of)


def train(cfg: TrainConfig, genotype: Genotype, name: str, resume: Path | None, quiet: bool,
          part_of: Path | None = None) -> dict[str, Any]:
    """run_train's setup and loop."""
    # ---- setup: a new run directory, or the checkpoint of the run being resumed
    check_genotype_fits(cfg, genotype)
    check_global_batch(cfg.data.batch_size)  # under torchrun: checked before anything is written
    # ---- data: the whole training split (or data.subset of it) for training, the test split for testing; read
    # before the run directory exists, so that a refused data set leaves nothing behind
    train_set = load_dataset(cfg.data, "train")
    test_set = load_dataset(cfg.data, "test")
    run = Run(cfg.run, cfg.seed, name, "train", dump_yaml(cfg), resume, quiet, part_of=part_of)
    device, log, state, dist = run.device, run.log, run.state, run.dist
    t = cfg.train
    if resume is None:
        log.write_text(GENOTYPE, genotype.to_json())

    notes = data_notes(cfg.data, train_set)
    mean, std = channel_stats(train_set.images)
    subset = None
    if cfg.data.subset:
        subset = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.data.subset]
    shard = (dist.rank, dist.world)  # this process's part of every (global) batch
    train = Batches(train_set, subset, batch_size=cfg.data.batch_size, mean=mean, std=std, device=device,
                    seed=cfg.seed, augment=cfg.data.augment, cutout=cfg.data.cutout, shard=shard)
    test = Batches(test_set, batch_size=max(cfg.data.batch_size, 256), mean=mean, std=std, device=device,
                   shuffle=False, drop_last=False, shard=shard)
    notes += batch_notes({"training set": train})
    num_classes, in_channels, size = len(train_set.classes), train_set.images.shape[1], train_set.images.shape[-1]
    classes = list(train_set.classes)
    run.record_data({"name": cfg.data.name, "train_images": train.num_images, "test_images": test.num_images,
                     "classes": num_classes, "image_shape": list(train_set.images.shape[1:])})
    del train_set, test_set

    # ---- network and optimizer
    model = make_network(cfg, genotype, num_classes, in_channels).to(device)
    params, flops = count_parameters(model), count_flops(model, in_channels, size)
    if cfg.run.sync_bn and dist.active:
        use_global_batchnorm(model)
    dist.broadcast_parameters(model)
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    amp, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)
    if cfg.model.drop_path > 0:  # on from the first epoch (at p = 0 it is the identity): one graph to compile
        model.use_drop_path = True  # type: ignore[assignment]
    net: nn.Module = torch.compile(model) if cfg.run.compile else model  # type: ignore[assignment]
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                          weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=t.lr_min)
    aux_weight = cfg.model.auxiliary_weight
    log.print(f"run directory {run.dir}")
    for note in notes:
        log.print(note)
    log.print(f"genotype {genotype}")
    log.print(f"{cfg.data.name}: {train.num_images} training images, {test.num_images} test images, {num_classes} "
              f"classes; {params / 1e6:.3f}M parameters, {flops / 1e6:.1f}M multiply-adds per image; device {device}")
    if dist.active:
        log.print(dist.describe(cfg.data.batch_size, cfg.run.sync_bn))

    # ---- resume: every state the next step depends on; records after the checkpoint are redone
    progress_state: dict[str, Any] = state["progress"] if state is not None else \
        {"test": [float("nan"), float("nan")], "train_time": 0.0, "seen": 0, "wall": 0.0}
    start = time.perf_counter()
    objects = {"model": model, "opt": opt, "sched": sched, "scaler": scaler}
    frame = Loop(run, cfg.run, t.epochs, len(train), objects, (METRICS,), extra=lambda: {"progress": {
        **progress_state, "wall": progress_state["wall"] + time.perf_counter() - start}})

    # ---- the training loop
    with frame:
        if frame.board is not None and state is None:
            from nas.space.plot import show_genotype

            show_genotype(frame.board, genotype, 0)
        for epoch in frame.epochs():
            drop_prob = cfg.model.drop_path * epoch / t.epochs  # grows linearly from 0
            model.drop_path_prob = drop_prob  # type: ignore[assignment]
            lr = sched.get_last_lr()[0]
            meter, first = frame.start_epoch(epoch, sums=2, streams=1)  # loss sum, correct; images
            for step, (x, y) in enumerate(train.epoch(epoch, first), start=first + 1):
                with amp:
                    logits, aux = net(x.contiguous(memory_format=memory_format))
                    loss = F.cross_entropy(logits, y)
                    total = loss if aux is None else loss + aux_weight * F.cross_entropy(aux, y)
                frame.check(total.detach(), step)
                backward_step(total, opt, scaler, model.parameters(), t.grad_clip, reduce=dist.average_gradients)
                if scaler is not None:
                    scaler.update()
                meter.add([loss.detach() * len(y), (logits.argmax(1) == y).sum()], len(y))
                frame.stepped(step, step_postfix)
            sched.step()
            frame.end_epoch()

            # ---- end of epoch: test (every eval_every epochs and at the last), metrics, checkpoint
            elapsed = meter.elapsed()
            (loss_sum, correct), (n,) = meter.totals()
            progress_state["train_time"] += elapsed
            progress_state["seen"] += n
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": 100 * correct / n,
                                      "lr": lr, "drop_path": drop_prob, "time_s": elapsed,
                                      "images_per_s": n / elapsed, "peak_mib": peak_memory_mib(device)}
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                dist.broadcast_buffers(model)  # rank 0's BatchNorm statistics: one network tested everywhere
                test_loss, test_acc = evaluate(net, test, amp, memory_format, dist)
                progress_state["test"] = [test_loss, test_acc]
                record.update(test_loss=test_loss, test_acc=test_acc)
            log.append(METRICS, record)
            tested = f"  test loss {record['test_loss']:.3f} acc {record['test_acc']:.2f}%" if "test_acc" in record \
                else ""
            log.print(f"epoch {epoch + 1}/{t.epochs}  train loss {record['train_loss']:.3f} acc "
                      f"{record['train_acc']:.2f}%{tested}  lr {lr:.4f}  {elapsed:.1f}s  "
                      f"{record['images_per_s']:.0f} img/s")
            if frame.board is not None:
                frame.board.scalars(record, epoch + 1, "train")
            frame.epoch_done()

    test_loss, test_acc = progress_state["test"]
    # every epoch's peak, earlier sessions' included (rank 0 holds the records; the others only their own)
    peaks = [r["peak_mib"] for r in read_jsonl(run.dir / METRICS)] if dist.main else [peak_memory_mib(device)]
    # The result is the last epoch's test accuracy: picking the best epoch by test accuracy would select on the
    # test set (the curve stays in metrics.jsonl).
    results = {"final_test_acc": test_acc, "final_test_loss": test_loss, "params": params, "flops": flops,
               "epochs": t.epochs, "peak_mib": max(peaks),
               "wall_time_s": progress_state["wall"] + time.perf_counter() - start,
               "images_per_s": progress_state["seen"] / max(progress_state["train_time"], 1e-9), "seed": cfg.seed,
               "device": str(device), "genotype": genotype.to_dict(), "config": to_dict(cfg)}
    if dist.main:  # the model before results.json, which marks the run finished: a kill between leaves it resumable
        from nas.model import save_model
        from nas.run.files import MODEL

        settings = {"C": cfg.model.C, "layers": cfg.model.layers, "num_classes": num_classes,
                    "in_channels": in_channels, "auxiliary": aux_weight > 0,
                    "stem_multiplier": cfg.model.stem_multiplier}
        save_model(run.dir / MODEL, model, genotype, settings, classes, mean, std, size)  # atomic: files.replacing
    log.write_json(RESULTS, results)
    run.finish()
    log.print(f"done: test accuracy {test_acc:.2f}% after the last epoch; results in {run.dir / RESULTS}")
    return {**results, "run_dir": str(run.dir)}


def run_repeats(cfg: TrainConfig, genotype: Genotype, seeds: list[int], name: str = "train", quiet: bool = False,
                resume: Path | None = None) -> dict[str, Any]:
    """Train once per seed, each in <run.dir>/seed-<s>; writes summary.json with mean and std over the runs. The
    parent directory records the recipe, the genotype and the seeds, so that the same command, or ``resume`` (the
    parent directory), carries on: finished trainings are kept, an interrupted one resumes from its checkpoint, the
    others run. A new parent that fails before any of its trainings is kept leaves nothing."""
    from nas.run.distributed import setup
    from nas.run.runtime import resolve_device

    if resume is not None and is_finished(resume, "repeats"):
        if not quiet and is_main_process():
            print(f"{resume} has finished its {count(len(seeds), 'training')}; {SUMMARY} is its result", flush=True)
        return dict(json.loads((resume / SUMMARY).read_text()))
    check_genotype_fits(cfg, genotype)  # refused before the parent directory exists
    d, device = setup(resolve_device(cfg.run.device))  # under torchrun, rank 0 alone prepares the parent
    created = resume is None and not (cfg.run.dir and Path(cfg.run.dir).exists())
    where, states, new = d.on_main(lambda: repeats_dir(cfg, genotype, seeds, name, resume, device))
    parent = Path(where)
    if not new and not quiet and is_main_process():
        print(f"continuing the trainings of {count(len(seeds), 'seed')} in {parent}: " + ", ".join(
            f"seed {s} {SEED_STATES[states[s]]}" for s in seeds), flush=True)
    runs = []
    try:
        for seed in seeds:
            sub_dir = parent / f"seed-{seed}"
            sub = dataclasses.replace(cfg, seed=seed, run=dataclasses.replace(cfg.run, dir=str(sub_dir)))
            again = states[seed] in ("done", "interrupted")  # else new: a "started" one starts again over its files
            runs.append(run_train(sub, genotype, name, resume=sub_dir if again else None, quiet=quiet,
                                  part_of=parent))
    except Exception:
        if new and d.main and not any(run_state(parent / f"seed-{s}", "train") != "not started" for s in seeds):
            remove_run_files(parent)  # nothing of it is kept: the corrected command starts anew
            if created:
                with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                    parent.rmdir()
        raise

    def stats(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {"seeds": seeds, "final_test_acc": stats("final_test_acc"),
               "params": runs[0]["params"], "flops": runs[0]["flops"], "runs": [f"seed-{s}" for s in seeds],
               "genotype": genotype.to_dict()}
    if not is_main_process():
        return summary
    RunLog(parent).write_json(SUMMARY, summary)
    final = summary["final_test_acc"]
    print(f"{count(len(seeds), 'run')}: final test accuracy {final['mean']:.2f} ± {final['std']:.2f}% (sample std); "
          f"summary in {Path(parent) / SUMMARY}", flush=True)
    return summary


SEED_STATES = {"done": "has finished", "interrupted": "resumes from its checkpoint", "started": "starts again",
               "not started": "starts"}


def repeats_dir(cfg: TrainConfig, genotype: Genotype, seeds: list[int], name: str, resume: Path | None,
                device: torch.device) -> tuple[str, dict[int, str], bool]:
    """(Rank 0.) The parent directory of repeated trainings, the state of each seed's training in it, and whether the
    parent is new: the one resumed, the one the same command wrote before, or a new one with its record (meta.json
    naming the seeds, genotype.json, then config.yaml)."""
    parent = resume or continued_repeats(cfg, genotype, seeds)
    new = parent is None
    if parent is None:
        parent = prepare_run_dir(cfg.run.dir, name, cfg.run.overwrite, "repeats")
        held = [f"seed-{s}" for s in seeds if run_kind(parent / f"seed-{s}") is not None]
        if held and not cfg.run.overwrite:
            raise UserError(f"run.dir={str(parent)!r} holds trainings ({', '.join(held)}) that no record of repeated "
                            f"trainings names ({CONFIG}); choose another run.dir, or set run.overwrite=true to "
                            "replace them")
        record_repeats(parent, device, seeds, resumed=False)
        RunLog(parent).write_text(GENOTYPE, genotype.to_json())
        RunLog(parent).write_text(CONFIG, dump_yaml(recorded(cfg, parent)))
    else:
        record_repeats(parent, device, seeds, resumed=True)
    states = {s: "not started" if cfg.run.overwrite else run_state(parent / f"seed-{s}", "train") for s in seeds}
    return str(parent), states, new


def recorded(cfg: TrainConfig, parent: Path) -> TrainConfig:
    """The recipe that repeated trainings in ``parent`` record in its config.yaml."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(parent), overwrite=False))


def continued_repeats(cfg: TrainConfig, genotype: Genotype, seeds: list[int]) -> Path | None:
    """The parent directory of repeated trainings that the same command started before and that carries on (None:
    there is none, and a new one is prepared). Trainings of another recipe, genotype or seeds are refused."""
    if cfg.run.overwrite or not cfg.run.dir:
        return None
    parent = Path(cfg.run.dir)
    if run_kind(parent) != "repeats" or run_state(parent, "repeats") != "interrupted":
        return None  # none, or finished: prepare_run_dir refuses a finished one, saying so
    other = repeated_seeds(parent)
    differs = ("of another recipe (its config.yaml differs)"
               if (parent / CONFIG).read_text() != dump_yaml(recorded(cfg, parent)) else
               "of another genotype" if read_genotype(parent / GENOTYPE) != genotype else
               f"of seeds {', '.join(map(str, other))}" if other != seeds else None)
    if differs is not None:
        raise UserError(f"run.dir={cfg.run.dir!r} already holds repeated trainings {differs}; continue them with "
                        f"{resume_command('repeats', parent)}, choose another run.dir, or set run.overwrite=true to "
                        "replace them")
    return parent


def record_repeats(parent: Path, device: torch.device, seeds: list[int], resumed: bool) -> None:
    """This session in the parent's meta.json, with the seeds its trainings run (what --resume reads)."""
    record_session(parent, device, resumed=resumed, kind="repeats")
    meta = json.loads((parent / META).read_text())
    meta["seeds"] = seeds
    atomic_write_text(parent / META, json.dumps(meta, indent=2) + "\n")


def repeated_seeds(parent: Path) -> list[int]:
    """The seeds of the repeated trainings in ``parent``, as its meta.json records them."""
    seeds = json.loads((parent / META).read_text()).get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"{parent / META} names no seeds of repeated trainings; give the command that started them, "
                        "with --seeds, to carry them on")
    return [int(s) for s in seeds]


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.train", "evaluate"))
