"""Relaxation of the ideal-precision network: the free and nudged phases (Eq. 1/2, Algorithms 1/2).

The loop is explicit and autograd-free: the input drive ``w_1 x + b_1`` and every other
state-independent term are folded into per-layer constants once per phase
(:meth:`LayeredNetwork.constants`); each step is then one fused product per coupling and one
in-place nonlinearity per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .circuit import ConvergenceError, NodeField
from .fastrelax import try_relax
from .network import LayeredNetwork, State
from .phase import iterate, node_targets

__all__ = ["RelaxResult", "relax", "ConvergenceError", "ideal_field"]


@dataclass
class RelaxResult:
    """Result of a relaxation.

    Attributes:
        state: the final state ``s_T``, one ``(B, n_k)`` tensor per layer.
        residual: per-sample ``max_k ‖s_T − s_{T-1}‖_∞``, ``(B,)``: 0 at a fixed point, large
            for a 2-cycle, into which synchronous updates of strongly coupled layers can fall
            (docs/theory.md, fact 3). ``None`` for zero steps.
        trajectory: ``[s_0, s_1, …, s_T]`` when ``record=True``.
    """

    state: State
    residual: torch.Tensor | None
    trajectory: list[State] | None = None
    steps: int | None = None
    """Steps taken: the requested number, or fewer with the steady-state stop (``tol``)."""

    def converged(self, tol: float) -> torch.Tensor:
        """Per-sample boolean: the last step moved no unit by more than ``tol``."""
        if self.residual is None:
            raise ValueError("a relaxation of zero steps has no residual")
        return self.residual <= tol


def relax(net: LayeredNetwork, drive: torch.Tensor, state: State, steps: int, *,
          y: torch.Tensor | None = None, beta: float | torch.Tensor = 0.0,
          params=None, record: bool = False, track_grad: bool = False, masks: list | None = None,
          tol: float | None = None) -> RelaxResult:
    """Run ``steps`` synchronous steps of ``s ← σ(∂Φ/∂s − β ∂ℓ/∂s)`` from ``state``.

    Args:
        net: the network.
        drive: ``w_1 x + b_1`` for this batch, ``(B, n_1)`` (from :meth:`LayeredNetwork.input_drive`).
        state: initial state (the zero state for the free phase, the free steady state for a
            nudged phase). Not modified.
        steps: T (free phase) or K (nudged phase).
        y: labels ``(B,)`` or targets ``(B, C)``; needed when β ≠ 0.
        beta: a float, or a per-sample column ``(B, 1)`` so that +β and −β phases run together
            in one batch.
        record: keep every intermediate state.
        track_grad: keep the autograd graph (BPTT); otherwise the loop runs in place under
            ``torch.no_grad``.
        masks: scaled dropout masks per layer (App. F.3), fixed for the whole relaxation.
        tol: the steady-state stop: end after the first step at which every sample's residual
            ``max_k ‖s_t − s_{t−1}‖_∞`` is at most ``tol`` (``steps`` is then a maximum; the result's
            ``steps`` says how many ran). ``None``: exactly ``steps`` steps (the paper's recipes).
    """
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0 and tol == tol):
        raise ValueError(f"tol = {tol!r}: a steady-state tolerance must be a number > 0 (or None: fixed steps)")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if y is None and not (isinstance(beta, (int, float)) and beta == 0):
        raise ValueError("a nudged phase (beta != 0) needs targets y")
    # the compiled loop (fastrelax) where it applies
    if not track_grad and not record and params is None and tol is None:
        res = try_relax(net, drive, state, steps, y=y, beta=beta, masks=masks)
        if res is not None:
            res.steps = steps
            return res
    ctx = torch.enable_grad() if track_grad else torch.no_grad()
    with ctx:
        inplace = not track_grad
        s, _, residual, traj, n = iterate(_target(net, drive, y, beta, masks, params, inplace), net.act.unit_,
                                          net.act.unit_fn, state, steps, inplace=inplace, record=record, tol=tol)
    return RelaxResult(s, residual, traj, n)


def ideal_field(net: LayeredNetwork, drive: torch.Tensor, *, tau: float, y: torch.Tensor | None = None,
                beta: float | torch.Tensor = 0.0, masks: list | None = None, params=None) -> NodeField:
    """The node equation of the ideal substrate for one phase (free: ``beta=0``; nudged: ``beta`` and ``y``).

    ``z(s)`` of :func:`~neuromorph.phase.node_targets` on the network's reads, with the constants of
    :meth:`LayeredNetwork.constants` computed once, exactly as in :func:`relax` (same arguments: ``drive`` from
    :meth:`LayeredNetwork.input_drive`, ``beta`` a float or a per-sample ``(B, 1)`` column, dropout
    ``masks`` fixed for the phase).
    """
    if y is None and not (isinstance(beta, (int, float)) and beta == 0):
        raise ValueError("a nudged phase (beta != 0) needs targets y")
    return NodeField(_target(net, drive, y, beta, masks, params, inplace=False), net.act.unit_fn, tau)


def _target(net: LayeredNetwork, drive, y, beta, masks, params, inplace: bool):
    """``s -> z(s)`` of one phase on the ideal store: its reads made once (constants folded), then
    :func:`~neuromorph.phase.node_targets` per evaluation."""
    consts, ngb = net.constants(drive, y, beta, params)
    reads = net.reads(consts, ngb, net._split(params))
    o = net.act.offset

    def target(s: State) -> list[torch.Tensor]:
        return node_targets(reads, s, masks=masks, offset=o, inplace=inplace)

    return target
