"""One phase of the settling network, written once for every weight store (docs/architecture.md §1).

A phase (free, +β, −β) is the same computation on both substrates; what differs is where the weights live and how
they are read. The *weight store* of a substrate hands a phase its reads (:class:`PhaseReads`): for every synapse
``k`` a forward read (the current that synapse ``k`` drives into layer ``k``) and a transposed read (the current
it feeds back into layer ``k − 1``), the static input's current, and the nudge of the output layer. The ideal store
(:class:`neuromorph.network.IdealReads`) reads its parameter tensors with fused products; the crossbar store
(:class:`neuromorph.hardware.CrossbarReads`) reads its arrays through their periphery, with read noise. From those
reads this module builds the node equation's target :func:`node_targets` and iterates it :func:`iterate`: the step
``s ← unit(z(s))`` of Eq. 4 / 22 / 26, which is explicit Euler at ``dt = τ`` of the settling circuit
``τ du/dt = z(σ(u)) − u``.

Everything here is substrate-free: it imports neither the network model nor the crossbar arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

__all__ = ["PhaseReads", "node_targets", "iterate", "masked"]

State = list[torch.Tensor]


class PhaseReads(Protocol):
    """The reads of one phase from a weight store (all currents in weight units, through ``γ·(·) + o``).

    ``nudged``: whether the phase has a nudge (β ≠ 0).
    """

    nudged: bool

    def first(self) -> torch.Tensor:
        """The static input's contribution to layer 1's node, ``γ(w_1 x + b_1) + o``; read before any other read
        of the step. The caller never writes into it."""

    def enter(self, s: State) -> State:
        """The activities in the layout the reads take (e.g. flat rows); ``s`` is not modified."""

    def forward(self, k: int, pre: torch.Tensor) -> torch.Tensor:
        """A new tensor ``γ(w_k pre + b_k) + o``: synapse ``k``'s forward current into layer ``k`` (``k ≥ 1``)
        with the node's constant parts. A pooling synapse keeps what its transposed read needs (the switches)."""

    def feedback(self, k: int, post: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        """``acc + γ w_kᵀ post``: synapse ``k``'s current fed back into layer ``k − 1``; written into ``acc`` only
        when ``inplace``."""

    def nudge(self, last: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        """``acc`` plus the state-dependent nudge of the output layer (``−γβ ∂ℓ/∂s`` less what :meth:`first` or
        :meth:`forward` already hold)."""

    def leave(self, a: State) -> State:
        """The node targets in the state layout (the inverse of :meth:`enter`), finished (e.g. a gain applied
        after the reads when the reads could not carry it exactly)."""


def masked(state: State, masks: Sequence[torch.Tensor | None] | None) -> State:
    """``m̃ ⊙ s`` per layer (dropout, App. F.3): the activities the other layers and the read-out see."""
    if masks is None:
        return state
    return [s if m is None else s * m for s, m in zip(state, masks)]


def node_targets(reads: PhaseReads, state: State, *, masks: Sequence[torch.Tensor | None] | None = None,
                 offset: float = 0.0, inplace: bool = True) -> list[torch.Tensor]:
    """``z(s) = γ·(∂Φ/∂s − β ∂ℓ/∂s) + o`` per layer from a store's reads, so that the step is ``s ← unit(z)``.

    Node ``k`` sums the forward current of synapse ``k`` (layer 1: the static input's, :meth:`PhaseReads.first`)
    with the current fed back by synapse ``k + 1``; the output node adds the nudge. Forward reads come first (a
    pooling synapse keeps its argmax switches), then the transposed reads that unpool with them. With dropout
    ``masks`` (scaled) the target is that of ``Φ(m̃ ⊙ s)``: the reads see ``m̃ ⊙ s`` and each target is gated
    ``(z − o)·m̃ + o``. ``inplace=False`` builds new tensors only (autograd through the step, BPTT).
    """
    s = reads.enter(masked(state, masks))
    n = len(s)
    a0 = reads.first()
    a: list = [None] + [reads.forward(k, s[k - 1]) for k in range(1, n)]
    a[0] = reads.feedback(1, s[1], a0, False) if n > 1 else a0.clone()
    for k in range(1, n - 1):
        a[k] = reads.feedback(k + 1, s[k + 1], a[k], inplace)
    if reads.nudged:
        a[-1] = reads.nudge(s[-1], a[-1], inplace)
    a = reads.leave(a)
    if masks is not None:
        for k, m in enumerate(masks):
            if m is not None:
                a[k] = a[k].sub_(offset).mul_(m).add_(offset) if inplace else (a[k] - offset) * m + offset
    return a


def iterate(target: Callable[[State], list[torch.Tensor]], unit_: Callable[[torch.Tensor], torch.Tensor],
            unit: Callable[[torch.Tensor], torch.Tensor], state: State, steps: int, *, inplace: bool = True,
            record: bool = False, keep_targets: bool = False, tol: float | None = None):
    """``steps`` synchronous steps ``s ← unit(z(s))`` from ``state`` (not modified).

    ``unit_`` is the in-place output stage, used when ``inplace``; ``keep_targets``: the last step's node values
    ``z`` are kept (its output stage not in place). ``tol``: the steady-state stop, after the first step at which
    every sample's residual is at most ``tol`` (``steps`` is then a maximum). Returns ``(s, z, residual,
    trajectory, n)``: ``z`` the last node values (``None`` without ``keep_targets`` or steps), ``residual`` the
    per-sample ``max_k ‖s_n − s_{n−1}‖_∞`` of the last step (``None`` for zero steps), ``trajectory``
    ``[s_0, …, s_n]`` when ``record``, ``n`` the steps taken.
    """
    if tol is not None and keep_targets:
        raise ValueError("the steady-state stop keeps no node values (keep_targets); the circuit solvers' "
                         "SteadyState stop does")
    s = list(state)
    prev = s
    z = None
    traj = [s] if record else None
    residual = None
    n = 0
    for i in range(steps):
        z = target(s)
        prev = s
        last = i == steps - 1
        if inplace and not (keep_targets and last):
            s = [unit_(zk) for zk in z]
        else:
            s = [unit(zk) for zk in z]
        if record:
            traj.append(s)
        n = i + 1
        if tol is not None and not last:
            residual = _residual(s, prev)
            if float(residual.max()) <= tol:
                break
    if n > 0 and (residual is None or tol is None or n == steps):
        residual = _residual(s, prev)
    return s, (z if keep_targets else None), residual, traj, n


def _residual(s: State, prev: State) -> torch.Tensor:
    """Per sample, ``max_k ‖s_k − prev_k‖_∞``."""
    with torch.no_grad():
        return torch.stack([(a - b).abs().flatten(1).amax(1) for a, b in zip(s, prev)]).amax(0)
