"""Second-order DARTS (Liu et al., ICLR 2019, Sec. 2.3, Eq. 6-8): the alpha gradient of the validation loss at
the weights one virtual SGD step ahead, w' = w - xi * dw, where dw is what the weight optimizer would apply:
momentum * (its momentum buffer) + grad_w L_train(w, alpha) + weight_decay * w, and xi is the current weight
learning rate.

    grad_alpha L_val(w', alpha) - xi * H v,   v = grad_w' L_val(w', alpha),   H = grad^2_{alpha, w} L_train(w, alpha)

H v is taken by central finite differences, (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / 2 eps,
with eps = 0.01 / ||v||. xi = 0 gives the first-order gradient. Only the weights' values change, in place, and
every one is restored bit for bit before returning; the caller steps the alpha optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.searching.supernet import Supernet

EPS_SCALE = 0.01  # eps = EPS_SCALE / ||v||, as in the paper's code


def _loss(model: Supernet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), logits


def unrolled_alpha_backward(model: Supernet, train: tuple[torch.Tensor, torch.Tensor],
                            valid: tuple[torch.Tensor, torch.Tensor], w_opt: torch.optim.Optimizer,
                            weights: list[nn.Parameter], xi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Set every alpha's .grad to the second-order gradient (see the module's docstring); returns the validation
    loss and the number of correct predictions at w' (what the alpha step saw)."""
    alphas = model.arch_parameters()
    group = w_opt.param_groups[0]
    momentum, decay = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
    saved = [w.detach().clone() for w in weights]

    # the virtual step: w' = w - xi * (momentum * buffer + grad_w L_train + decay * w)
    model.set_step("weights")
    loss, _ = _loss(model, *train)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    with torch.no_grad():
        for w, g in zip(weights, grads, strict=True):
            step = torch.zeros_like(w) if g is None else g.clone()
            if decay:
                step.add_(w, alpha=decay)
            buf = w_opt.state.get(w, {}).get("momentum_buffer")
            if momentum and buf is not None:
                step.add_(buf, alpha=momentum)
            w.sub_(step, alpha=xi)

    # the validation loss at w': its gradient for alpha and for w'
    model.set_step("both")
    v_loss, logits = _loss(model, *valid)
    out = torch.autograd.grad(v_loss, [*alphas, *weights], allow_unused=True)
    d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, out[:len(alphas)], strict=True)]
    v = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, out[len(alphas):], strict=True)]

    # H v by central differences around w
    model.set_step("alpha")
    norm = float(torch.stack([(g.double() ** 2).sum() for g in v]).sum().sqrt())
    if xi and norm > 0:
        eps = EPS_SCALE / norm
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, g in zip(weights, saved, v, strict=True):
                    w.copy_(w0).add_(g, alpha=sign * eps)
            t_loss, _ = _loss(model, *train)
            sides.append(torch.autograd.grad(t_loss, alphas, allow_unused=True))
        for i, a in enumerate(alphas):
            plus, minus = (torch.zeros_like(a) if s[i] is None else s[i] for s in sides)
            d_alpha[i] = d_alpha[i] - xi * (plus - minus) / (2 * eps)
    with torch.no_grad():
        for w, w0 in zip(weights, saved, strict=True):
            w.copy_(w0)
    for a, g in zip(alphas, d_alpha, strict=True):
        a.grad = g.detach()
    return v_loss.detach(), (logits.argmax(1) == valid[1]).sum()
