"""Step mechanics shared by search and training: the autocast context, the fp16 gradient scaler, and one
backward-and-step with clipping of the true gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def autocast(device: torch.device, amp: str) -> Any:
    """The autocast context for run.amp ("off": a no-op context)."""
    import contextlib

    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                  params: Any = (), grad_clip: float = 0.0, before_step: Callable[[], Any] | None = None,
                  reduce: Callable[[torch.optim.Optimizer], Any] | None = None) -> None:
    """Backpropagate ``loss`` and step ``opt``, through ``scaler`` (fp16) when there is one, clipping the global
    norm of ``params``' true (unscaled) gradients to ``grad_clip`` when it is positive, and calling ``before_step``
    just before the step. ``reduce(opt)`` runs right after the backward pass: a distributed run averages the
    gradients there (nas.run.distributed.Dist.average_gradients), so clipping and the step see the global ones. The
    caller updates the scaler once all of an iteration's optimizers have stepped."""
    opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if reduce is not None:
        reduce(opt)
    if scaler is not None and grad_clip > 0:
        scaler.unscale_(opt)  # clip the true gradients
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if before_step is not None:
        before_step()
    opt.step() if scaler is None else scaler.step(opt)
