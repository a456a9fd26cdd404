"""GDAS's sample and its gradient (Dong & Yang, CVPR 2019, Eq. 3-5): Gumbel noise, the hard Gumbel-softmax sample,
and the straight-through functions that give every alpha entry its gradient while the forward pass computes only the
sampled op, storing no more than a plain network stores: fused with the op's final BatchNorm, with an average pooling
by its adjoint, or alone, and for a sampled `none` a zero that carries alpha's gradient.

nas/searching/mixing.py turns these into GDAS's mixing (GdasSample), and SNAS's soft sample reads the same noise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_like(alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise of alpha's shape from a clamped uniform: never inf or NaN. ``generator`` (on alpha's
    device): the search seeds one per step, so every process of a distributed run draws the same sample."""
    finfo = torch.finfo(alpha.dtype)
    u = torch.rand(alpha.shape, dtype=alpha.dtype, device=alpha.device, generator=generator)
    u = u.clamp_(min=finfo.tiny, max=1.0 - finfo.eps)
    return -torch.log(-torch.log(u))


def gumbel_softmax_hard(alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One op per row of alpha (E, K): returns (hard, index).

    index (E,) is argmax of log_softmax(alpha) + g, an exact sample of softmax(alpha) whatever tau is.
    hard (E, K) equals one_hot(index) exactly in value, and its gradient is that of the soft weights
    p = softmax((log_softmax(alpha) + g) / tau). It is written one_hot + (p - p.detach()) rather than
    one_hot - p.detach() + p: the same gradient, but the forward value is exactly 0 or 1.
    """
    logits = (F.log_softmax(alpha, dim=-1) + gumbel_like(alpha, generator)) / tau  # (E, K)
    index = logits.argmax(dim=-1)  # (E,)
    one_hot = F.one_hot(index, alpha.shape[-1]).to(alpha.dtype)
    if not alpha.requires_grad:
        return one_hot, index
    p = logits.softmax(dim=-1)
    return one_hot + (p - p.detach()), index


class StraightThrough(torch.autograd.Function):
    """y = out * hard[k] + sum_{j != k} hard[j], computed as y = out (hard is exactly one-hot in value).

    Backward: dy/dout = hard[k] = 1, dL/dhard[k] = <g, out>, dL/dhard[j] = sum(g) for j != k, as the
    expression above gives; no full-size multiply or add in the forward pass.
    """

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, hard_row: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(out)
        ctx.k, ctx.num_ops = k, hard_row.shape[0]
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        grad_hard = g.sum().expand(ctx.num_ops).clone()
        grad_hard[ctx.k] = (g * out).sum()
        return g, grad_hard, None


class BNStraightThrough(torch.autograd.Function):
    """The sampled op's final BatchNorm (training mode, no affine parameters) and the straight-through in one:
    y = BN(z) in value; dL/dz is BN's own backward; dL/dhard[k] = <g, y>, computed from z and the batch statistics
    as sum_c invstd_c * sum(g * (z - mean_c)); dL/dhard[j] = sum(g) for j != k.

    It keeps z, which a plain network's BN keeps anyway, and never y: the straight-through costs no extra memory.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, hard_row: torch.Tensor, k: int, bn: nn.BatchNorm2d) -> torch.Tensor:
        factor = 0.0
        if bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does in training
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        y, mean, invstd, reserve, impl = torch._batch_norm_impl_index(
            z, None, None, bn.running_mean, bn.running_var, True, factor, bn.eps, torch.backends.cudnn.enabled)
        ctx.save_for_backward(z, mean, invstd, reserve)
        ctx.k, ctx.num_ops, ctx.impl, ctx.eps = k, hard_row.shape[0], impl, bn.eps
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        z, mean, invstd, reserve = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last if z.is_contiguous(memory_format=torch.channels_last)
                         else torch.contiguous_format)
        grad_z = torch.ops.aten._batch_norm_impl_index_backward(
            ctx.impl, z, g, None, None, None, mean, invstd, True, ctx.eps, [True, False, False], reserve)[0]
        g_sum = g.sum((2, 3)).sum(0)  # (C,); the contiguous dims first reduce faster than (0, 2, 3) at once
        dot = (((g * z).sum((2, 3)).sum(0) - mean * g_sum) * invstd).sum()
        grad_hard = g_sum.sum().expand(ctx.num_ops).clone()
        grad_hard[ctx.k] = dot
        return grad_z, grad_hard, None, None


class AvgPoolStraightThrough(torch.autograd.Function):
    """An average pooling P and the straight-through in one. P is linear, so dL/dhard[k] = <g, P x> = <P^T g, x>,
    and P^T g is the input gradient the pooling's backward computes anyway: no output kept, nothing recomputed."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, hard_row: torch.Tensor, k: int, pool: nn.AvgPool2d) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.k, ctx.num_ops, ctx.pool = k, hard_row.shape[0], pool
        return pool(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        p = ctx.pool
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        grad_x = torch.ops.aten.avg_pool2d_backward(g.contiguous(memory_format=fmt), x, p.kernel_size, p.stride,
                                                    p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override)
        grad_hard = g.sum().expand(ctx.num_ops).clone()
        grad_hard[ctx.k] = (grad_x * x).sum()
        return grad_x, grad_hard, None, None


def zero_carrier(hard_row: torch.Tensor, k: int) -> torch.Tensor:
    """A 0-dim tensor equal to exactly 0 whose gradient reaches hard[j] for every j != k: the whole of a sampled
    `none` edge in the alpha step (its output is 0, so dL/dhard[k] = <g, 0> = 0 and dL/dhard[j] = sum(g))."""
    return hard_row.sum() - hard_row[k]
