"""Zero-cost scores of a network: each a function of (network, batch) -> float, higher is better, computed on an
untrained network in a few forward and backward passes, and one registry of them (``register_score``,
``score_names``, ``get_score``). The formulas, with the paper each comes from:

- naswot: log|det K| of the ReLU codes' agreement kernel (Mellor et al., ICML 2021, Sec. 3);
- synflow: sum of theta * dR/dtheta for R the output sum of the all-positive network on an all-ones input, in
  float64 (Tanaka et al., NeurIPS 2020, Eq. 2), scored as its logarithm;
- snip: sum of |theta * dL/dtheta| of the cross-entropy on the batch (Lee et al., ICLR 2019, Eq. 6);
- grad_norm: sum over layers of the L2 norm of dL/dtheta (Abdelfattah et al., ICLR 2021, Sec. 3);
- jacob_cov: -sum(log(v + k) + 1 / (v + k)) over the eigenvalues v of the correlation of the input Jacobians
  (Mellor et al., 2020, arXiv v1), k = 1e-5;
- zico: sum over layers of log(sum over the layer's weights of mean|g| / std(g)), mean and std over mini-batches
  of the batch (Li et al., ICLR 2023, Eq. 3);
- ntk: minus the log of the condition number of the neural tangent kernel of the logits on the batch (Chen et al.,
  ICLR 2021, Eq. 5: TE-NAS's trainability);
- swap: the number of distinct sample-wise activation patterns, the batch's binary ReLU codes of each unit, in a copy
  whose weights are drawn again from N(0, 1) (Peng et al., ICLR 2024; the unregularised score);
- meco: sum over convolutions of the smallest eigenvalue of the Pearson correlation between the output channels of
  one image (Jiang et al., NeurIPS 2023: MeCo);
- params, flops: the naive baselines, the network's parameters and multiply-adds.

Layers are the network's convolutions and linear maps; BatchNorm's affine terms are not scored. A weight that does not
take part in the forward pass (an op the supernet does not run) contributes nothing.

A score is a pure function of (network, batch): every registered score runs through ``pure``, which puts back the
network's buffers (BatchNorm's running statistics, which a forward pass in training mode moves) and every module's
training flag, so that a score never changes what the next score, or the next call, sees. Gradients are taken with
``torch.autograd.grad``, so no ``.grad`` changes either; synflow and swap work on a copy.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nas.errors import UserError
from nas.text import did_you_mean

Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W), labels (N,)
ScoreFn = Callable[[nn.Module, Batch], float]


@dataclass(frozen=True)
class Score:
    name: str
    fn: ScoreFn
    summary: str  # what it measures, in a line


_SCORES: dict[str, Score] = {}


def pure(fn: ScoreFn) -> ScoreFn:
    """``fn`` that leaves the network as it found it: its buffers (BatchNorm's running statistics) and every
    module's training flag are put back afterwards, whatever ``fn`` ran."""
    @functools.wraps(fn)
    def run(model: nn.Module, batch: Batch) -> float:
        modes = [(m, m.training) for m in model.modules()]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            return fn(model, batch)
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, training in modes:
                m.training = training
    return run


def register_score(name: str, summary: str) -> Callable[[ScoreFn], ScoreFn]:
    """Make ``fn(network, (x, y)) -> float`` (higher is better) available as the score ``name``, made pure (see
    ``pure``): the decorated name is the pure function too."""
    def add(fn: ScoreFn) -> ScoreFn:
        if name in _SCORES:
            raise ValueError(f"score {name!r} is already registered")
        _SCORES[name] = Score(name, pure(fn), summary)
        return _SCORES[name].fn
    return add


def score_names() -> tuple[str, ...]:
    return tuple(_SCORES)


def score_summary(name: str) -> str:
    return _SCORES[name].summary


def check_score_name(name: str, key: str = "search.score") -> None:
    """Raise a one-line UserError, naming ``key``, for a name that is not a registered score."""
    if name not in _SCORES:
        hint = did_you_mean(name, tuple(_SCORES))
        raise UserError(f"{key}={name!r} is not a score{hint}; valid: {', '.join(_SCORES)}")


def get_score(name: str) -> ScoreFn:
    check_score_name(name)
    return _SCORES[name].fn


# ---------------------------------------------------------------------------------------------- helpers

def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of a trained network (which returns (logits, auxiliary)) or a supernet (logits)."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def layer_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the network's convolutions and linear maps that can take a gradient."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.requires_grad]


def weight_grads(model: nn.Module, loss_of: Callable[[], torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dloss/dweight) of every layer weight that the loss depends on."""
    weights = layer_weights(model)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_of(), weights, allow_unused=True)
    return [(w.detach(), g) for w, g in zip(weights, grads, strict=True) if g is not None]


def cross_entropy(model: nn.Module, batch: Batch) -> Callable[[], torch.Tensor]:
    x, y = batch
    return lambda: nn.functional.cross_entropy(logits_of(model, x), y)


# ---------------------------------------------------------------------------------------------- the scores

def relu_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """K (N, N) float64 for the batch x (N, ...): K[i, j] = sum over the ReLUs that ran of the number of units where
    images i and j are both active or both inactive (the input of the ReLU > 0, or not)."""
    K = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        c = (inputs[0].detach().flatten(1) > 0).to(torch.float64)  # (N, units) binary codes
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            logits_of(model, x)
    finally:
        for h in handles:
            h.remove()
    return K


@register_score("naswot", "log|det K| of the ReLU codes of the batch (Mellor et al. 2021)")
def naswot(model: nn.Module, batch: Batch) -> float:
    return float(torch.linalg.slogdet(relu_kernel(model, batch[0]))[1])


def arch_parameter_ids(model: nn.Module) -> set[int]:
    """The ids of a supernet's architecture parameters (alpha), which are no weights of the network; none for a
    network that has none."""
    arch = getattr(model, "arch_parameters", None)
    return {id(p) for p in arch()} if callable(arch) else set()


@register_score("synflow", "log of sum theta * dR/dtheta, R the output of the all-positive network on ones "
                           "(Tanaka et al. 2020)")
def synflow(model: nn.Module, batch: Batch) -> float:
    x = batch[0]
    net = copy.deepcopy(model).double().eval()
    for m in net.modules():  # BatchNorm at fresh statistics, whatever the network's have become: a scaled identity
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    arch = arch_parameter_ids(net)
    with torch.no_grad():  # every weight made positive; a supernet's alpha keeps its sign (it weights ops, and
        for p in net.parameters():  # softmax(|alpha|) would make alpha and -alpha one supernet)
            if id(p) not in arch:
                p.abs_()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    pairs = weight_grads(net, lambda: logits_of(net, ones).sum())
    total = sum(float((w * g).sum()) for w, g in pairs)
    return math.log(total) if total > 0 else -math.inf


@register_score("snip", "sum |theta * dL/dtheta| of the cross-entropy on the batch (Lee et al. 2019)")
def snip(model: nn.Module, batch: Batch) -> float:
    return sum(float((w * g).abs().sum()) for w, g in weight_grads(model, cross_entropy(model, batch)))


@register_score("grad_norm", "sum over layers of ||dL/dtheta|| (Abdelfattah et al. 2021)")
def grad_norm(model: nn.Module, batch: Batch) -> float:
    return sum(float(g.norm()) for _, g in weight_grads(model, cross_entropy(model, batch)))


@register_score("jacob_cov", "-sum(log(v + k) + 1/(v + k)) over the eigenvalues of the input Jacobians' "
                             "correlation (Mellor et al. 2020)")
def jacob_cov(model: nn.Module, batch: Batch) -> float:
    x = batch[0].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (J,) = torch.autograd.grad(logits_of(model, x).sum(), x, allow_unused=True)
    if J is None:  # the output does not depend on the input (a cell that passes nothing on)
        return -math.inf
    J = J.flatten(1).to(torch.float64)  # (N, D) one input gradient per image
    corr = torch.corrcoef(J)
    if not torch.isfinite(corr).all():  # an image whose gradient is constant: no correlation is defined
        return -math.inf
    v = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(v + k) + 1 / (v + k)).sum())


@register_score("zico", "sum over layers of log(sum mean|g| / std(g)) over mini-batches (Li et al. 2023)")
def zico(model: nn.Module, batch: Batch, splits: int = 2) -> float:
    x, y = batch
    if len(x) < 2 * splits:
        raise UserError(f"zico needs at least {2 * splits} images in its batch, got {len(x)}")
    per_split = [weight_grads(model, cross_entropy(model, (xs, ys)))
                 for xs, ys in zip(x.chunk(splits), y.chunk(splits), strict=True)]
    total = 0.0
    for layer in zip(*per_split, strict=True):
        g = torch.stack([gi for _, gi in layer]).flatten(1).to(torch.float64)  # (splits, weights)
        std = g.std(0, unbiased=False)
        keep = std > 0
        ratio = float((g.abs().mean(0)[keep] / std[keep]).sum())
        if ratio > 0:
            total += math.log(ratio)
    return total


@register_score("ntk", "-log of the condition number of the logits' neural tangent kernel on the batch "
                       "(Chen et al. 2021, TE-NAS)")
def ntk(model: nn.Module, batch: Batch) -> float:
    x = batch[0]
    weights = layer_weights(model)
    rows = []
    with torch.enable_grad():
        out = logits_of(model, x)
        for i in range(len(x)):
            grads = torch.autograd.grad(out[i].sum(), weights, retain_graph=i + 1 < len(x), allow_unused=True)
            rows.append(torch.cat([g.flatten() for g in grads if g is not None]))
    G = torch.stack(rows).to(torch.float64)  # (N, P) one gradient per image
    eig = torch.linalg.eigvalsh(G @ G.T)
    if eig[0] <= 0:  # a singular kernel: the worst condition there is
        return -math.inf
    return -math.log(float(eig[-1] / eig[0]))


def pattern_count(codes: torch.Tensor) -> int:
    """The number of distinct rows of ``codes`` (units, N) bool: each row packed into 62-bit words first."""
    n = codes.shape[1]
    words = -(-n // 62)
    padded = torch.zeros(codes.shape[0], words * 62, dtype=torch.int64, device=codes.device)
    padded[:, :n] = codes.to(torch.int64)
    bits = 2 ** torch.arange(62, dtype=torch.int64, device=codes.device)
    packed = (padded.view(-1, words, 62) * bits).sum(-1)  # (units, words)
    return int(torch.unique(packed, dim=0).shape[0])


@register_score("swap", "distinct sample-wise activation patterns of the ReLUs on the batch, weights from N(0, 1) "
                        "(Peng et al. 2024)")
def swap(model: nn.Module, batch: Batch) -> float:
    net = copy.deepcopy(model)
    g = torch.Generator(device=batch[0].device).manual_seed(0)
    with torch.no_grad():  # the authors' initialisation: weights N(0, 1), biases 0, BatchNorm's affine terms 1 and 0
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.normal_(generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    codes: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if output.dim() == 4:  # the feature maps' units, as the authors count them
            codes.append((output.detach() > 0).flatten(1).T)  # (units, N)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            logits_of(net, batch[0])
    finally:
        for h in handles:
            h.remove()
    return float(pattern_count(torch.cat(codes))) if codes else 0.0


@register_score("meco", "sum over convolutions of the smallest eigenvalue of the correlation of one image's output "
                        "channels (Jiang et al. 2023)")
def meco(model: nn.Module, batch: Batch) -> float:
    total = torch.zeros((), dtype=torch.float64)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        f = output.detach()[0].flatten(1).to(torch.float64)  # (channels, H*W) the one image's feature maps
        if f.shape[0] < 2 or f.shape[1] < 2:
            return
        # a constant channel's row and column are undefined: 0, its diagonal entry too, as the authors set them (so
        # a layer that passes nothing on adds 0, and one with dead channels at most 0)
        corr = torch.corrcoef(f).nan_to_num(0.0)
        total.add_(torch.linalg.eigvalsh(corr)[0].cpu())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            logits_of(model, batch[0][:1])  # one image: the published score reads one
    finally:
        for h in handles:
            h.remove()
    return float(total)


@register_score("params", "the number of parameters (the naive baseline)")
def params(model: nn.Module, batch: Batch) -> float:
    return float(sum(p.numel() for p in model.parameters()))


@register_score("flops", "multiply-adds of one image's forward pass (the naive baseline)")
def flops(model: nn.Module, batch: Batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = batch[0][:1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            logits_of(model, x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2
