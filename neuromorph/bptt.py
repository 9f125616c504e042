"""Backpropagation through time through the free phase: the baseline EP is measured against.

BPTT runs the free phase for T steps from ``s_0 = 0``, takes the loss at the last step
``L = ℓ(s_T, y)`` and differentiates through all T steps (not truncated), with autograd over
the same explicit step as the EP engine (App. B).

:func:`bptt_truncated` gives ``∇^BPTT(t) = Σ_{k=T-t}^{T-1} ∂L/∂θ_k`` (Eq. 6) for t = 1…K from
a single backward pass: the parameters of each of the last K steps are separate leaves
``θ_k`` holding the same values, so one ``backward`` yields every per-step sensitivity.
"""

from __future__ import annotations

import torch

from .dynamics import relax
from .network import LayeredNetwork

__all__ = ["bptt_gradients", "bptt_truncated"]


def _leaves(net: LayeredNetwork) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(True) for p in net.param_list()]


def bptt_gradients(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, T: int, masks: list | None = None):
    """Full BPTT gradient of the batch-mean loss after T free steps (dropout ``masks`` as in EP).

    Returns ``(grads, loss, state)`` with grads in :meth:`LayeredNetwork.param_list` order.
    """
    with torch.enable_grad():
        params = _leaves(net)
        drive = net.input_drive(x, params)
        res = relax(net, drive, net.zero_state(x.shape[0]), T, params=params, track_grad=True, masks=masks)
        loss = net.loss(net.masked(res.state, masks), y, params).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return grads, loss.detach(), [s.detach() for s in res.state]


def bptt_truncated(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, T: int, K: int):
    """``[∇^BPTT(1), …, ∇^BPTT(K)]`` (Eq. 6) from one backward pass with per-step leaves.

    The read-out (if any) enters only the loss at step T, so its gradient is the same for
    every t. Returns a list of K gradient lists (``param_list`` order).
    """
    if not 1 <= K <= T:
        raise ValueError(f"need 1 <= K <= T, got K={K}, T={T}")
    batch = x.shape[0]
    with torch.enable_grad():
        shared = _leaves(net)
        res = relax(net, net.input_drive(x, shared), net.zero_state(batch), T - K, params=shared,
                    track_grad=True)
        s = res.state
        step_params = []
        for _ in range(K):
            p = _leaves(net)
            step_params.append(p)
            s = relax(net, net.input_drive(x, p), s, 1, params=p, track_grad=True).state
        n_syn = sum(len(g) for g in net.groups[: len(net.synapses)])
        loss_params = step_params[-1][:n_syn] + shared[n_syn:]
        loss = net.loss(s, y, loss_params).mean()
        flat = [q for p in step_params for q in p[:n_syn]] + shared[n_syn:]
        g = torch.autograd.grad(loss, flat, allow_unused=True)
    g = [torch.zeros_like(q) if gi is None else gi for q, gi in zip(flat, g)]
    per_step = [g[i * n_syn:(i + 1) * n_syn] for i in range(K)]  # step T-K … T-1
    readout = g[K * n_syn:]
    out, acc = [], None
    for k in range(K - 1, -1, -1):  # last step first: t = 1 is step T-1
        acc = [a.clone() for a in per_step[k]] if acc is None else [a + b for a, b in zip(acc, per_step[k])]
        out.append(acc + readout)
    return out
