"""GDAS over a short list: the final stage's weight-sharing alternative to training each finalist alone. One supernet
holds the weights every finalist shares; beta holds one logit per finalist. Each step draws one finalist by hard
Gumbel-softmax over beta (Dong & Yang, CVPR 2019, applied to the list instead of to each edge) and runs only it,
through the supernet's op mask: the weight step trains the shared weights on the weight half, the beta step moves
beta on the alpha half by the straight-through gradient (the drawn finalist's logits times its one-hot weight,
exactly 1 in value). tau is annealed from tau_max to tau_min over the epochs. The finalists are then ranked by beta,
or by the shared network's accuracy on the alpha half with each finalist's mask.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nas.data.pipeline import Batches
from nas.searching.gumbel import gumbel_softmax_hard
from nas.searching.mixing import create_mixer, tau_at
from nas.searching.perturb import accuracy
from nas.searching.supernet import build_supernet
from nas.space.derivation import masks_of
from nas.space.genotype import Genotype
from nas.text import count

RANKS = ("beta", "accuracy")


def gdas_over_list(cells: Sequence[Genotype], train: Batches, valid: Batches, plain: Batches, *, space: Any, C: int,
                   layers: int, num_classes: int, epochs: int, rank: str = "beta", lr: float = 0.1,
                   momentum: float = 0.9, weight_decay: float = 5e-4, beta_lr: float = 3e-3, tau_max: float = 10.0,
                   tau_min: float = 0.1, seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
                   say: Callable[[str], None] = print) -> tuple[Genotype, list[dict[str, Any]]]:
    """The finalist of ``cells`` that GDAS over the list ranks first (by ``rank``), and every finalist's record
    (beta, how often a step drew it, its accuracy with the shared weights). ``valid``: the alpha half's batches the
    beta steps read; ``plain``: the alpha half unaugmented, for the accuracies."""
    if rank not in RANKS:
        raise ValueError(f"unknown rank {rank!r}; valid: {', '.join(RANKS)}")
    device = train.device
    with torch.random.fork_rng(devices=[]):  # the shared network's initialisation, seeded like a finalist's
        torch.manual_seed(seed)
        model = build_supernet(space, C=C, layers=layers, num_classes=num_classes, mixer=create_mixer("gdas"),
                               in_channels=train.images.shape[1])
    model = model.to(device).to(memory_format=memory_format).train()
    model.generator = torch.Generator(device=device).manual_seed(seed)
    masks = [masks_of(space, g, device) for g in cells]
    beta = torch.zeros(len(cells), device=device, requires_grad=True)  # (K,) one logit per finalist
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    steps = min(len(train), len(valid))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs * steps)
    b_opt = torch.optim.Adam([beta], lr=beta_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    drawn = torch.zeros(len(cells), dtype=torch.long)
    g = torch.Generator(device=device).manual_seed(seed + 1)  # the draws over the list
    say(f"final stage: {count(len(cells), 'cell')} sharing one supernet's weights (C={C}, {count(layers, 'cell')} per "
        f"stage), {count(epochs, 'epoch')} of GDAS over the list (one cell drawn per step by hard Gumbel-softmax over "
        f"its logits beta), ranked by {'beta' if rank == 'beta' else 'the shared network accuracy'}")
    start = time.perf_counter()
    for epoch in range(epochs):
        tau = tau_at(epoch, epochs, tau_max, tau_min)
        for (xw, yw), (xa, ya) in zip(train.epoch(epoch), valid.epoch(epoch), strict=False):
            k = int(gumbel_softmax_hard(beta.detach()[None], tau, g)[1])  # the weight step's finalist
            drawn[k] += 1
            model.op_mask = masks[k]
            model.set_step("weights")
            loss = nn.functional.cross_entropy(model(xw.contiguous(memory_format=memory_format)), yw)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(weights, 5.0)
            w_opt.step()
            sched.step()
            hard, index = gumbel_softmax_hard(beta[None], tau, g)  # the beta step's finalist, straight-through
            k = int(index)
            model.op_mask = masks[k]
            model.set_step("none")
            with torch.no_grad():
                logits = model(xa.contiguous(memory_format=memory_format))
            b_loss = nn.functional.cross_entropy(logits * hard[0, k], ya)
            b_opt.zero_grad(set_to_none=True)
            b_loss.backward()
            b_opt.step()
        if (epoch + 1) % max(1, epochs // 4) == 0 or epoch + 1 == epochs:
            top = int(beta.argmax())
            say(f"  epoch {epoch + 1}/{epochs}, {time.perf_counter() - start:.0f}s: tau {tau:.2f}, the largest beta "
                f"{float(beta.detach()[top]):.3f}  {cells[top]}")
    model.set_step("none")
    accs = []
    for m in masks:
        model.op_mask = m
        accs.append(accuracy(model, plain, seed, contextlib.nullcontext(), memory_format))
    model.op_mask = None
    values = beta.detach().cpu().tolist() if rank == "beta" else accs
    order = sorted(range(len(cells)), key=lambda i: (-values[i], i))
    best = order[0]
    say(f"  the best: beta {float(beta.detach()[best]):.3f}, shared accuracy {accs[best]:.2f}%  {cells[best]}")
    records = [{"genotype": str(gen), "beta": float(beta.detach()[i]), "drawn": int(drawn[i]), "shared_acc": accs[i],
                "place": order.index(i) + 1} for i, gen in enumerate(cells)]
    return cells[best], records
