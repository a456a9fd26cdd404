"""Data-parallel runs under torchrun (torch.distributed): NCCL on GPUs, gloo on CPUs.

Every process builds the same network from the same seed and draws the same architecture sample at every step
(the supernet's generator is seeded from the run seed, the epoch and the step), so all of them run the same
sampled network; each reads its own shard of every global batch (nas.data.pipeline.Batches). After each backward pass
``average_gradients`` all-reduces, in one flat buffer, exactly the gradients that exist: in a GDAS weight step the
sampled ops' and the shared layers', never the unsampled ops' (no zero-filling). The optimizers then take identical
steps everywhere, so the parameters stay bit-identical without ever being broadcast again. Only rank 0 writes.

Without torchrun (no WORLD_SIZE in the environment, or 1) nothing here communicates: ``Dist()`` is one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nas.errors import UserError


@dataclass
class Dist:
    """This process's place in the run: rank, world size and local rank (the GPU index on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    bytes_reduced: int = 0  # gradient bytes this process has all-reduced (tests; docs/distributed.md's figure)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- collectives: each is a no-op in a single process

    def average_gradients(self, opt: torch.optim.Optimizer) -> int:
        """Average across processes the gradients of ``opt``'s parameters that exist (the same set everywhere: the
        processes ran the same sampled network), as one flat all-reduce. Returns the elements reduced."""
        if not self.active:
            return 0
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return 0
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        self.bytes_reduced += flat.numel() * flat.element_size()
        return flat.numel()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over processes (``t`` itself in a single process)."""
        if self.active:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``flags`` over processes: whether any process raised each flag."""
        if self.active:
            flags = flags.clone()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (pickled; for setup-time values such as a checkpoint's state)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 alone, its value on every process; a UserError it raises is raised on every process
        (for work one process must do, such as creating the run directory)."""
        found: tuple[Any, UserError | None] = (None, None)
        if self.main:
            try:
                found = (fn(), None)
            except UserError as e:
                found = (None, e)
        value, error = self.broadcast(found)
        if error is not None:
            raise error
        return value

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Make every process hold rank 0's parameters and buffers (once, at the start)."""
        self._broadcast([*model.parameters(), *model.buffers()])

    def agree(self, stop: Any, loss: torch.Tensor) -> bool:
        """Once per step and at each epoch's end: whether the loss is non-finite on any process, and, should a signal
        have reached any process (``stop.received``), the same signal on all as ``stop.signum``, so that every process
        checkpoints and stops (or fails) at the same step. ``stop.signum`` changes only here: a signal that lands after
        this call counts at the next step or epoch's end, on every process alike."""
        if not self.active:
            stop.signum = stop.received
            return not math.isfinite(float(loss))  # one read of the loss; torch.isfinite would add an op to the step
        signal = torch.tensor(float(stop.received or 0), device=loss.device)
        flags = self.any(torch.stack([signal, (~torch.isfinite(loss)).float()]))
        stop.signum = int(flags[0]) or None
        return bool(flags[1])

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every process, so that evaluation mode computes the
        same function everywhere."""
        self._broadcast(list(model.buffers()))

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        if self.active:
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def describe(self, batch_size: int, sync_bn: bool) -> str:
        """The run's line on how it is spread over the processes."""
        return (f"data-parallel over {self.world} processes: {batch_size // self.world} images of each batch per "
                f"process{', global BatchNorm statistics' if sync_bn else ''}")


def from_environment() -> Dist:
    """The Dist that torchrun's environment describes (one process when there is none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def check_global_batch(batch_size: int) -> int:
    """The number of processes, once the global batch is known to split evenly over them (before anything is
    written)."""
    world = from_environment().world
    if batch_size % world:
        raise UserError(f"data.batch_size={batch_size} does not split evenly over {world} processes; use a multiple "
                        f"of {world}")
    return world


def is_main_process() -> bool:
    """Whether this process reports to the user (rank 0, or not under torchrun); readable before any setup."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo otherwise); returns this process's Dist and its
    device (cuda:LOCAL_RANK for CUDA runs)."""
    d = from_environment()
    if not d.active:
        return d, device
    if device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {d.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                            "use --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- global BatchNorm

class _SumOverProcesses(torch.autograd.Function):
    """y = the sum of x over processes, on every process. Each process backpropagates its own loss through the
    same y, so dL/dx (L the sum of the processes' losses) is the sum of the incoming gradients: an all-reduce."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _SumOverProcesses.apply(x)
    return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch (all processes' shards), on CPUs (gloo)
    as on GPUs: the mean and the variance are all-reduced with autograd-aware collectives, so the backward pass is
    that of one BatchNorm over the whole batch. Outside distributed training it is nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        total = sum_over_processes(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), x.numel() / c)]))
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = sum_over_processes((centred * centred).sum((0, 2, 3))) / n  # two passes: as exact as one process's BN
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))  # on the device: no sync per BatchNorm
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def use_global_batchnorm(model: nn.Module) -> int:
    """Turn every BatchNorm2d of ``model`` into a GlobalBatchNorm2d in place (the same module objects, so references
    to them stay valid); GDAS's fused BN straight-through then takes the plain path. Returns how many."""
    count = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
            count += 1
        kinds = getattr(m, "kinds", None)
        if isinstance(kinds, list):  # a supernet's MixedEdge: its fused BN path calls the BN kernels directly
            setattr(m, "kinds", ["plain" if k == "bn" else k for k in kinds])  # noqa: B010
    return count
