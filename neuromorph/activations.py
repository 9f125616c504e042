"""Activation functions of the convergent RNN, written as ``σ(x) = g(γ·x + o)``.

Splitting each activation into a gain ``γ``, an offset ``o`` and a unit nonlinearity ``g``
lets the relaxation loop fold ``γ`` and ``o`` into the matrix products it already does
(``torch.addmm(..., alpha=γ)``), so one step costs one fused product and one in-place
nonlinearity per layer.

Activations of the paper and of its official code, whose ``my_hard_sig``, ``mysig`` and
``hard_sigmoid`` are ``half_hard_sigmoid``, ``sigmoid4`` and ``hard_sigmoid`` here
(docs/theory.md, fact 5):

=====================  ==================================  ====================
name                   σ(x)                                 where
=====================  ==================================  ====================
``half_hard_sigmoid``  ``clamp(x/2, 0, 1)``                 Eq. 43 (the paper's)
``hard_sigmoid``       ``clamp(x, 0, 1)``                   Eq. 42
``sigmoid4``           ``1 / (1 + exp(-4 (x - 1/2)))``      official ``mysig``
``sigmoid``            ``1 / (1 + exp(-x))``
``tanh``               ``tanh(x)``
=====================  ==================================  ====================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """``σ(x) = g(gain·x + offset)`` with ``g`` one of ``clamp01``, ``sigmoid``, ``tanh``."""

    name: str
    gain: float
    offset: float
    unit: str  # "clamp01" | "sigmoid" | "tanh"

    def unit_(self, z: torch.Tensor) -> torch.Tensor:
        """Apply ``g`` in place (no autograd): the hot-loop form."""
        if self.unit == "clamp01":
            return z.clamp_(0.0, 1.0)
        if self.unit == "sigmoid":
            return z.sigmoid_()
        return z.tanh_()

    def unit_fn(self, z: torch.Tensor) -> torch.Tensor:
        """Apply ``g`` out of place (autograd-safe)."""
        if self.unit == "clamp01":
            return z.clamp(0.0, 1.0)
        if self.unit == "sigmoid":
            return torch.sigmoid(z)
        return torch.tanh(z)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``σ(x)``, out of place."""
        return self.unit_fn(x * self.gain + self.offset)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``σ'(x)`` (the right-continuous choice 0 at the kinks of the clamps)."""
        z = x * self.gain + self.offset
        if self.unit == "clamp01":
            return ((z > 0) & (z < 1)).to(x.dtype) * self.gain
        if self.unit == "sigmoid":
            g = torch.sigmoid(z)
            return g * (1 - g) * self.gain
        return (1 - torch.tanh(z) ** 2) * self.gain


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("half_hard_sigmoid", 0.5, 0.0, "clamp01"),
        Activation("hard_sigmoid", 1.0, 0.0, "clamp01"),
        Activation("sigmoid4", 4.0, -2.0, "sigmoid"),
        Activation("sigmoid", 1.0, 0.0, "sigmoid"),
        Activation("tanh", 1.0, 0.0, "tanh"),
    )
}


def get_activation(name: str | Activation) -> Activation:
    """Look an activation up by name; raise ``ValueError`` naming the allowed ones."""
    if isinstance(name, Activation):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
