"""The Lyapunov (continuous Hopfield) energy of the node equation ``τ du/dt = z(g(u)) − u``.

With ``σ(x) = g(γx + o)`` (:mod:`neuromorph.activations`) the node value is ``u = γx + o`` and
``z(s) = γ·∂(Φ − βℓ)/∂s + o`` (:meth:`LayeredNetwork.preactivation`). In the variable ``x`` the
dynamics are the classic continuous Hopfield network ``τ dx/dt = −x + ∂(Φ − βℓ)/∂s``, ``s = σ(x)``,
whose energy is::

    E(s) = Σ_nodes G(s) − Φ(x, s) + β ℓ(s, y),     G' = σ⁻¹,   G(s) = (Ĝ(s) − o·s)/γ

with ``Ĝ' = g⁻¹``: ``Ĝ(s) = s log s + (1−s) log(1−s)`` (sigmoid), ``s·atanh(s) + ½ log(1−s²)``
(tanh), ``s²/2`` on [0, 1] (clamp01, the convex integral of the inverse of the ramp). Along a
trajectory (``σ⁻¹(s) = (u − o)/γ``, ``∂(Φ − βℓ)/∂s = (z − o)/γ``)::

    dE/dt = Σ (σ⁻¹(s) − ∂(Φ − βℓ)/∂s)·ds/dt = −(τ/γ) Σ g'(u) (du/dt)² ≤ 0

for symmetric couplings (the bidirectional network, where ``z`` is a gradient). Dimensionless (weight
units). With dropout masks ``m̃`` the energy is that of ``Φ(m̃ ⊙ s)`` and ``ℓ(m̃ ⊙ s)``.
"""

from __future__ import annotations

import torch

from .network import LayeredNetwork, State

__all__ = ["lyapunov_energy", "lyapunov_rate"]


def _unit_integral(unit: str, s: torch.Tensor) -> torch.Tensor:
    """``Ĝ(s) = ∫ g⁻¹``, elementwise."""
    if unit == "sigmoid":
        return torch.xlogy(s, s) + torch.xlogy(1 - s, 1 - s)
    if unit == "tanh":
        return s * torch.atanh(s) + 0.5 * torch.log1p(-s * s)
    if unit == "clamp01":
        return 0.5 * s * s
    raise ValueError(f"unknown unit {unit!r}; allowed: clamp01, sigmoid, tanh")


def lyapunov_energy(net: LayeredNetwork, x: torch.Tensor, s: State, *, y: torch.Tensor | None = None,
                    beta: float | torch.Tensor = 0.0, masks: list | None = None, params=None) -> torch.Tensor:
    """``E(s) = Σ G(s) − Φ(x, s) + βℓ(s, y)`` per sample, ``(B,)`` (``beta`` a float or a ``(B, 1)`` column)."""
    act = net.act
    e = -net.phi(x, net.masked(s, masks), params)
    for sk in s:
        e = e + ((_unit_integral(act.unit, sk) - act.offset * sk) / act.gain).flatten(1).sum(1)
    if not (isinstance(beta, (int, float)) and beta == 0):
        if y is None:
            raise ValueError("a nudged energy (beta != 0) needs targets y")
        b = beta.reshape(-1) if isinstance(beta, torch.Tensor) else beta
        e = e + b * net.loss(net.masked(s, masks), y, params)
    return e


def lyapunov_rate(net: LayeredNetwork, u: State, du_dt: State, tau: float) -> torch.Tensor:
    """``dE/dt = −(τ/γ) Σ g'(u) (du/dt)²`` per sample, ``(B,)``, in 1/s."""
    act = net.act
    total = 0.0
    for uk, vk in zip(u, du_dt):
        if act.unit == "clamp01":
            d = ((uk > 0) & (uk < 1)).to(uk.dtype)
        else:
            g = act.unit_fn(uk)
            d = g * (1 - g) if act.unit == "sigmoid" else 1 - g * g
        total = total + (d * vk * vk).flatten(1).sum(1)
    return -tau / act.gain * total
