"""Circuit settling: batched ODE solvers for the node equation of an EP network (docs/architecture.md §2).

Each neuron is an integrating node with capacitance ``C`` [F] and leak conductance ``g0`` [S]::

    C du/dt = −g0·u + I(s),   s = g(u),   τ = C/g0 [s]

Dividing by ``g0`` and writing the currents in weight units (``W = (G+ − G−)/g0``) gives, per
layer, the vector field of this module::

    τ du/dt = z(g(u)) − u

where ``z(s)`` is the argument of the unit nonlinearity ``g`` of one discrete EP step
(:meth:`neuromorph.network.LayeredNetwork.preactivation`, ``z = γ·(∂Φ/∂s − β ∂ℓ/∂s) + o``) so that
the discrete iteration is ``s ← g(z(s))``. Consequences used by the tests:

* explicit Euler with ``dt = τ`` gives ``u_{n+1} = z(s_n)``: exactly :func:`neuromorph.dynamics.relax`;
* a steady state ``u* = z(g(u*))`` is the discrete fixed point ``s* = g(z(s*))``.

Units: times (``t``, ``dt``, ``t_max``, settling times) are in seconds and ``τ`` in seconds
(:func:`time_constant` from farads and siemens); ``u`` and ``z`` are dimensionless (weight units,
the node voltage divided by the voltage of one weight unit), so ``du/dt`` is in 1/s. The steady-state
residual ``max |du/dt|·τ = max |z − u|`` is dimensionless. Solver steps are given in seconds;
``Euler.in_tau(0.1, tau)`` builds a step of ``0.1·τ``.

Design (diffrax-like strategy objects): a vector field (:class:`NodeField`, built for the ideal
substrate by :func:`neuromorph.dynamics.ideal_field`; any ``rhs(t, u) -> du/dt`` callable works), a solver
(:class:`Euler`, :class:`Heun`, :class:`RK4` with a fixed step; :class:`Bosh3`, :class:`Dopri5`
adaptive embedded Runge–Kutta pairs), a stop (:class:`SteadyState`, :class:`FixedTime`) and one
entry point, :func:`settle`. States are lists of tensors, one per layer, batched over samples
(dim 0); every operation is a whole-layer tensor op. :func:`solve_ivp_reference` is the slow
float64 SciPy path used to validate the solvers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

__all__ = [
    "State", "ConvergenceError", "VectorField", "NodeField", "node_from_state", "time_constant",
    "Tableau", "Euler", "Heun", "RK4", "Bosh3", "Dopri5", "SteadyState", "FixedTime",
    "SettleResult", "settle", "residual", "solve_ivp_reference",
]

class ConvergenceError(RuntimeError):
    """A relaxation produced non-finite states (divergence)."""


State = list[torch.Tensor]
VectorField = Callable[[float, State], State]
"""``rhs(t, u) -> du/dt``: ``t`` in seconds, ``u`` a list of ``(B, …)`` tensors, ``du/dt`` in 1/s."""


def _positive(name: str, value, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        allowed = "a finite number > 0" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def time_constant(capacitance: float, conductance: float) -> float:
    """``τ = C / g0`` in seconds from a capacitance in farads and a leak conductance in siemens."""
    _positive("capacitance (F)", capacitance)
    _positive("conductance (S)", conductance)
    return capacitance / conductance


# ---------------------------------------------------------------------------------------------- vector fields
@dataclass(frozen=True)
class NodeField:
    """The node equation ``τ du/dt = z(g(u)) − u`` as a callable ``rhs(t, u)`` [1/s].

    Attributes:
        target: ``s -> z(s)``, the per-layer steady-state node value for the activities ``s``
            (dimensionless). The ideal substrate uses :meth:`LayeredNetwork.preactivation`; a crossbar
            substrate plugs in its read currents divided by ``g0`` (plus the offset ``o``) here.
        unit: the output stage ``g`` (``s = g(u)``), e.g. ``net.act.unit_fn``.
        tau: ``τ = C/g0`` in seconds.

    The field is autonomous (``t`` is accepted and ignored).
    """

    target: Callable[[State], list[torch.Tensor]]
    unit: Callable[[torch.Tensor], torch.Tensor]
    tau: float

    def __post_init__(self) -> None:
        _positive("tau (s)", self.tau)

    def state(self, u: State) -> State:
        """``s = g(u)`` per layer."""
        return [self.unit(uk) for uk in u]

    def __call__(self, t: float, u: State) -> State:
        z = self.target(self.state(u))
        return [torch.sub(zk, uk).div_(self.tau) for zk, uk in zip(z, u)]


def node_from_state(unit: str, state: State) -> State:
    """A node value ``u`` with ``g(u) = s`` per layer (``unit`` is ``net.act.unit``).

    ``clamp01``: ``u = s`` (one preimage; any ``s`` in [0, 1]). ``sigmoid``: ``logit(s)``; ``tanh``:
    ``atanh(s)``; these need ``s`` strictly inside the rails (0..1, −1..1), otherwise ``ValueError``.
    """
    if unit == "clamp01":
        return [s.clone() for s in state]
    lo, inv = {"sigmoid": (0.0, torch.logit), "tanh": (-1.0, torch.atanh)}.get(unit, (None, None))
    if inv is None:
        raise ValueError(f"unknown unit {unit!r}; allowed: clamp01, sigmoid, tanh")
    if any(bool(((s <= lo) | (s >= 1.0)).any()) for s in state):
        raise ValueError(f"unit {unit!r} reaches the rails ({lo}, 1) only at u = ±inf; give s strictly inside")
    return [inv(s) for s in state]


def residual(k: State, tau: float) -> torch.Tensor:
    """Per-sample steady-state residual ``max |du/dt|·τ`` over every node of every layer, ``(B,)``."""
    return torch.stack([kk.abs().flatten(1).amax(1) for kk in k]).amax(0) * tau


# ---------------------------------------------------------------------------------------------- solvers
@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge–Kutta method (stage ``i`` at ``t + c_i h``).

    ``a[i]`` holds the coefficients of stage ``i + 1`` (stage 0 is ``k1 = f(t, u)``), ``b`` the weights
    of the propagated solution, ``err`` the weights ``b − b̂`` of the embedded error estimate (or
    ``None``). ``fsal``: the last stage is evaluated at the new point (``a[-1] == b``), so it is
    ``f(t + h, u_new)``; otherwise the step evaluates ``f(t + h, u_new)`` once more (it is the next
    step's ``k1`` and the residual of the steady-state stop).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    err: tuple[float, ...] | None = None
    err_order: int | None = None
    fsal: bool = False


def _combine(u: State, h: float, coefs: Sequence[float], ks: Sequence[State]) -> State:
    """``u + h Σ_j coefs_j k_j`` per layer (zero coefficients skipped)."""
    out = [uk.clone() for uk in u]
    for cj, kj in zip(coefs, ks):
        if cj != 0:
            for o, kk in zip(out, kj):
                o.add_(kk, alpha=h * cj)
    return out


def _rk_step(tab: Tableau, f: VectorField, t: float, u: State, k1: State, h: float):
    """One explicit RK step: ``(u_new, k_new = f(t + h, u_new), ks)``."""
    ks = [k1]
    for ci, ai in zip(tab.c[1:], tab.a):
        ks.append(f(t + ci * h, _combine(u, h, ai, ks)))
    u_new = _combine(u, h, tab.b, ks)
    if not tab.fsal:
        ks.append(f(t + h, u_new))
    return u_new, ks[-1], ks


@dataclass(frozen=True)
class _FixedStep:
    """Fixed-step explicit RK; ``dt`` in seconds.

    Between consecutive output times ``a < b`` (``t0``, save points, the end) the solver takes
    ``n = ⌈(b − a)/dt⌉`` equal steps ``h = (b − a)/n ≤ dt``: ``h = dt`` when ``dt`` divides the span.
    """

    dt: float
    tableau: ClassVar[Tableau]
    adaptive: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _positive(f"{type(self).__name__}.dt (s)", self.dt)

    @classmethod
    def in_tau(cls, dt_over_tau: float, tau: float):
        """The solver with a step of ``dt_over_tau · τ`` seconds."""
        _positive("dt_over_tau", dt_over_tau)
        _positive("tau (s)", tau)
        return cls(dt_over_tau * tau)

    def step(self, f: VectorField, t: float, u: State, k1: State, h: float):
        u_new, k_new, _ = _rk_step(self.tableau, f, t, u, k1, h)
        return u_new, k_new, None


@dataclass(frozen=True)
class Euler(_FixedStep):
    """Explicit Euler, order 1: ``u ← u + h f(u)``. With ``h = τ``: ``u ← z(g(u))``, the discrete EP step."""

    tableau: ClassVar[Tableau] = Tableau(c=(0.0,), a=(), b=(1.0,), order=1)


@dataclass(frozen=True)
class Heun(_FixedStep):
    """Heun's method (explicit trapezoid), order 2."""

    tableau: ClassVar[Tableau] = Tableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5), order=2)


@dataclass(frozen=True)
class RK4(_FixedStep):
    """The classical fourth-order Runge–Kutta method."""

    tableau: ClassVar[Tableau] = Tableau(
        c=(0.0, 0.5, 0.5, 1.0), a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4)


@dataclass(frozen=True)
class _Adaptive:
    """Embedded RK pair with error control (Hairer, Nørsett & Wanner I, §II.4).

    Per sample the error norm is ``‖e/(atol + rtol·max(|u|, |u_new|))‖_RMS`` over all nodes of all
    layers. The step size is shared across the batch: a step is accepted when the largest
    per-sample norm ``E`` is ≤ 1 (frozen samples contribute 0), and the next step is
    ``h·clip(safety·E^(−1/(q+1)), 0.2, 10)`` (``q`` the embedded order; no growth right after a
    rejection), capped by ``dt_max`` and the next output time.

    Steady states: without ``dt_max`` the step grows until the method reaches the edge of its
    stability region on the fastest node mode (eigenvalues ``−(1 ± ρ)/τ`` of the linearised field,
    ``ρ`` the spectral radius of ``∂z/∂u``); there the error estimate sits at the tolerance and the
    residual stops decreasing at about ``rtol·|u| + atol``. For a :class:`SteadyState` stop set
    ``dt_max ≈ τ`` (inside the stability region for moderate couplings), or tolerances well below
    the stop's ``tol``.

    Attributes:
        rtol, atol: relative and absolute tolerances on ``u`` (dimensionless), > 0.
        dt0: first trial step in seconds; ``None``: ``0.01·τ``.
        dt_max: largest step in seconds (``None``: unbounded).
        max_steps: attempted steps (accepted + rejected) after which :func:`settle` stops.
        safety: step-size safety factor in (0, 1).
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    dt0: float | None = None
    dt_max: float | None = None
    max_steps: int = 100_000
    safety: float = 0.9
    tableau: ClassVar[Tableau]
    adaptive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        _positive(f"{name}.rtol", self.rtol)
        _positive(f"{name}.atol", self.atol)
        _positive(f"{name}.dt0 (s)", self.dt0, allow_none=True)
        _positive(f"{name}.dt_max (s)", self.dt_max, allow_none=True)
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"{name}.max_steps must be an integer >= 1, got {self.max_steps!r}")
        if not (isinstance(self.safety, (int, float)) and 0 < self.safety < 1):
            raise ValueError(f"{name}.safety must be in (0, 1), got {self.safety!r}")

    def step(self, f: VectorField, t: float, u: State, k1: State, h: float):
        """``(u_new, f(t + h, u_new), per-sample error norm (B,))``."""
        u_new, k_new, ks = _rk_step(self.tableau, f, t, u, k1, h)
        e = _combine([torch.zeros_like(uk) for uk in u], h, self.tableau.err, ks)
        sq, n = 0.0, 0
        for ek, a, b in zip(e, u, u_new):
            scale = torch.maximum(a.abs(), b.abs()).mul_(self.rtol).add_(self.atol)
            sq = sq + (ek / scale).square().flatten(1).sum(1)
            n += ek[0].numel()
        return u_new, k_new, (sq / n).sqrt()

    def next_dt(self, h: float, err: float, after_reject: bool) -> float:
        """Step-size controller: ``h·clip(safety·err^(−1/(q+1)), 0.2, 10)``."""
        q = self.tableau.err_order
        if not math.isfinite(err):
            return 0.2 * h
        factor = 10.0 if err == 0 else min(10.0, max(0.2, self.safety * err ** (-1.0 / (q + 1))))
        return h * (min(1.0, factor) if after_reject else factor)


@dataclass(frozen=True)
class Bosh3(_Adaptive):
    """Bogacki–Shampine 3(2) pair (FSAL), order 3 with a 2nd-order error estimate."""

    tableau: ClassVar[Tableau] = Tableau(
        c=(0.0, 0.5, 0.75, 1.0),
        a=((0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0.0),
        err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
        order=3, err_order=2, fsal=True)


@dataclass(frozen=True)
class Dopri5(_Adaptive):
    """Dormand–Prince 5(4) pair (FSAL, the method of ``scipy``'s RK45), order 5 with a 4th-order estimate."""

    tableau: ClassVar[Tableau] = Tableau(
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        a=((1 / 5,),
           (3 / 40, 9 / 40),
           (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
           (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
        b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
        err=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
        order=5, err_order=4, fsal=True)


Solver = _FixedStep | _Adaptive


# ---------------------------------------------------------------------------------------------- stops
@dataclass(frozen=True)
class SteadyState:
    """Stop at the circuit's steady state.

    Sample ``b`` counts as converged while its residual ``max |du/dt|·τ = max |z − u|``
    (dimensionless, checked at every accepted step) is below ``tol``; its settling time is the
    time at which it last entered that set. Settling stops when every sample has converged or after
    ``t_max`` seconds (at ``t0 + t_max``). ``freeze=True`` holds a converged sample fixed (``du/dt := 0`` from then on;
    its settling time is then the first crossing). Freezing fixes the state, it does not skip the
    sample's compute: the field is still evaluated on the whole batch.
    """

    tol: float
    t_max: float
    freeze: bool = False

    def __post_init__(self) -> None:
        _positive("SteadyState.tol", self.tol)
        _positive("SteadyState.t_max (s)", self.t_max)
        if not isinstance(self.freeze, bool):
            raise ValueError(f"SteadyState.freeze must be True or False, got {self.freeze!r}")

    @property
    def t_end(self) -> float:
        return self.t_max


@dataclass(frozen=True)
class FixedTime:
    """Integrate for exactly ``t_end`` seconds (to ``t0 + t_end``; no early stop). With ``tol`` the result
    also reports convergence and settling times as :class:`SteadyState` does."""

    t_end: float
    tol: float | None = None

    def __post_init__(self) -> None:
        _positive("FixedTime.t_end (s)", self.t_end)
        _positive("FixedTime.tol", self.tol, allow_none=True)

    freeze: ClassVar[bool] = False


# ---------------------------------------------------------------------------------------------- settle
@dataclass
class SettleResult:
    """Result of :func:`settle`.

    Attributes:
        u: final node values, one tensor per layer.
        s: final activities ``g(u)`` (``None`` for a field without a ``state`` method).
        t: final time in seconds.
        settling_time: per-sample time (s) at which the residual last fell below ``tol`` (NaN where
            not converged), ``(B,)``; ``None`` without a tolerance.
        converged: per-sample flag ``residual < tol`` at the end, ``(B,)`` bool; ``None`` without a tolerance.
        residual: per-sample ``max |du/dt|·τ`` at the end, ``(B,)`` (``max|du/dt|`` in 1/s without τ).
        n_steps / n_rejected / n_evals: accepted steps, rejected steps, evaluations of the field.
        reason: ``"converged"``, ``"t_max"``, ``"t_end"`` or ``"max_steps"``.
        trajectory / times: the states (and their times in s) at every accepted step (``record=True``)
            or at the reached ``save_at`` times.
    """

    u: State
    s: State | None
    t: float
    settling_time: torch.Tensor | None
    converged: torch.Tensor | None
    residual: torch.Tensor
    n_steps: int
    n_rejected: int
    n_evals: int
    reason: str
    trajectory: list[State] | None = None
    times: list[float] | None = None


@dataclass
class _Tracker:
    """Per-sample convergence bookkeeping of :func:`settle`."""

    tol: float | None
    freeze: bool
    residual: torch.Tensor
    converged: torch.Tensor = field(init=False)
    settling: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.converged = torch.zeros_like(self.residual, dtype=torch.bool)
        self.settling = torch.full_like(self.residual, math.nan)

    def update(self, res: torch.Tensor, t: float) -> None:
        if not bool(torch.isfinite(res).all()):
            bad = (~torch.isfinite(res)).nonzero().flatten().tolist()
            raise ConvergenceError(f"non-finite node values at t = {t:.6g} s for samples {bad[:10]}")
        if self.freeze:  # frozen samples keep their residual and flag
            res = torch.where(self.converged, self.residual, res)
        self.residual = res
        if self.tol is None:
            return
        now = res < self.tol
        entered = now & ~self.converged
        self.settling = torch.where(entered, torch.full_like(self.settling, t), self.settling)
        self.settling = torch.where(now, self.settling, torch.full_like(self.settling, math.nan))
        self.converged = now | (self.converged if self.freeze else torch.zeros_like(now))

    @property
    def all_converged(self) -> bool:
        return self.tol is not None and bool(self.converged.all())


def _mask(k: State, active: torch.Tensor) -> State:
    """``du/dt := 0`` for the inactive (frozen) samples; ``active`` is a 0/1 ``(B,)`` tensor."""
    return [kk * active.view(-1, *([1] * (kk.dim() - 1))) for kk in k]


def _masked(rhs: VectorField, active: torch.Tensor) -> VectorField:
    """``rhs`` followed by :func:`_mask`."""
    def f(t: float, u: State) -> State:
        return _mask(rhs(t, u), active)
    return f


def _counted(rhs: VectorField, counter: list[int]) -> VectorField:
    def f(t: float, u: State) -> State:
        counter[0] += 1
        return rhs(t, u)
    return f


def _output_times(t0: float, t_end: float, save_at: Sequence[float] | None) -> list[float]:
    if save_at is None:
        return [t_end]
    pts = sorted(float(v) for v in save_at)
    if pts and (pts[0] < t0 or pts[-1] > t_end):
        raise ValueError(f"save_at times must lie in [t0, t_end] = [{t0}, {t_end}] s, got {pts[0]}..{pts[-1]}")
    return sorted(set(pts) | {t_end})


def settle(rhs: VectorField, u0: State, *, solver: Solver, stop: SteadyState | FixedTime,
           tau: float | None = None, record: bool = False, save_at: Sequence[float] | None = None,
           t0: float = 0.0) -> SettleResult:
    """Integrate ``du/dt = rhs(t, u)`` from ``u0`` at ``t0`` seconds until ``stop`` (autograd off).

    Args:
        rhs: the vector field (a :class:`NodeField` or any ``rhs(t, u) -> du/dt`` callable, 1/s).
        u0: initial node values, one ``(B, …)`` tensor per layer (not modified). For the free phase of
            the circuit ``u0 = 0``; for a nudged phase the free steady state's ``u``.
        solver: :class:`Euler`, :class:`Heun`, :class:`RK4`, :class:`Bosh3` or :class:`Dopri5`.
        stop: :class:`SteadyState` or :class:`FixedTime`.
        tau: the time constant in seconds, for the residual ``max |du/dt|·τ`` and the default first
            adaptive step ``0.01·τ``; defaults to ``rhs.tau``. Without one (a plain callable), the
            residual is ``max |du/dt|`` in 1/s.
        record: keep the state after every accepted step (and ``u0``).
        save_at: times in seconds in ``[t0, t0 + t_end]`` at which to keep the state; steps are
            shortened to land on them. Exclusive with ``record``.
        t0: initial time in seconds.

    The steady-state check runs after every accepted step on ``f(t, u)``, which is also the next
    step's first stage, so it costs no extra evaluation.
    """
    if not isinstance(solver, (_FixedStep, _Adaptive)):
        raise ValueError(f"solver must be one of Euler, Heun, RK4, Bosh3, Dopri5, got {solver!r}")
    if not isinstance(stop, (SteadyState, FixedTime)):
        raise ValueError(f"stop must be SteadyState or FixedTime, got {stop!r}")
    tau = getattr(rhs, "tau", None) if tau is None else tau
    _positive("tau (s)", tau, allow_none=True)
    if tau is None and solver.adaptive and solver.dt0 is None:
        raise ValueError(f"{type(solver).__name__} needs dt0 (s) or a time constant tau (s) for its first step")
    if record and save_at is not None:
        raise ValueError("record=True and save_at are exclusive; choose one")
    if not isinstance(t0, (int, float)) or not math.isfinite(t0):
        raise ValueError(f"t0 must be a finite number of seconds, got {t0!r}")
    res_scale = 1.0 if tau is None else tau
    outputs = _output_times(t0, t0 + stop.t_end, save_at)
    saves = {float(v) for v in save_at or ()}
    evals = [0]
    f_raw = _counted(rhs, evals)
    with torch.no_grad():
        u = [uk.clone() for uk in u0]
        k = f_raw(t0, u)
        track = _Tracker(stop.tol, stop.freeze, residual(k, res_scale))
        track.update(track.residual, t0)
        keep = record or save_at is not None
        traj, times = ([u], [t0]) if record else ([], [])
        t, n_steps, n_rej, reason = float(t0), 0, 0, None
        h = (solver.dt0 or 0.01 * tau) if solver.adaptive else solver.dt
        after_reject = False
        for target in outputs:
            seg_start, n_fixed = t, max(1, math.ceil((target - t) / h * (1 - 1e-12)))
            i = 0
            while t < target:
                if isinstance(stop, SteadyState) and track.all_converged:
                    reason = "converged"
                    break
                f, k1 = f_raw, k
                if track.freeze:
                    active = (~track.converged).to(u[0].dtype)
                    f, k1 = _masked(f_raw, active), _mask(k, active)
                if solver.adaptive:
                    if n_steps + n_rej >= solver.max_steps:
                        reason = "max_steps"
                        break
                    h_try = min(h, target - t, solver.dt_max or math.inf)
                    u_new, k_new, err = solver.step(f, t, u, k1, h_try)
                    e = float(err.max())
                    h_prop = solver.next_dt(h_try, e, after_reject)
                    if not e <= 1.0:
                        n_rej, after_reject, h = n_rej + 1, True, h_prop
                        continue
                    u, k, after_reject = u_new, k_new, False
                    h = max(h, h_prop) if h_try < h else h_prop  # a step cut to an output time keeps h
                    t_next = target if target - (t + h_try) <= 1e-12 * abs(target) else t + h_try
                else:
                    i += 1
                    t_next = target if i == n_fixed else seg_start + i * (target - seg_start) / n_fixed
                    u, k, _ = solver.step(f, t, u, k1, t_next - t)
                t = t_next
                n_steps += 1
                track.update(residual(k, res_scale), t)
                if record:
                    traj.append(u)
                    times.append(t)
            if reason is not None:
                break
            if save_at is not None and target in saves:
                traj.append(u)
                times.append(t)
        if reason is None:
            if isinstance(stop, FixedTime):
                reason = "t_end"
            else:
                reason = "converged" if track.all_converged else "t_max"
        if isinstance(stop, FixedTime) and reason == "max_steps":
            raise ConvergenceError(f"{type(solver).__name__} reached max_steps={solver.max_steps} at t = {t:.6g} s "
                                   f"before t_end = {t0 + stop.t_end:.6g} s; raise max_steps or the tolerances")
        s = rhs.state(u) if hasattr(rhs, "state") else None
    has_tol = stop.tol is not None
    return SettleResult(u, s, t, track.settling if has_tol else None, track.converged if has_tol else None,
                        track.residual, n_steps, n_rej, evals[0], reason,
                        traj if keep else None, times if keep else None)


# ---------------------------------------------------------------------------------------------- reference
def solve_ivp_reference(rhs: VectorField, u0: State, t_eval: Sequence[float], *, method: str = "DOP853",
                        rtol: float = 1e-10, atol: float = 1e-12, t0: float = 0.0) -> list[State]:
    """The slow validation path: :func:`scipy.integrate.solve_ivp` on the flattened float64 state.

    The field is evaluated on float64 copies of the state (exact float64 only when the network
    itself is float64). Returns the states at ``t_eval`` (seconds, ≥ ``t0``), one list per time.
    """
    from scipy.integrate import solve_ivp

    methods = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
    if method not in methods:
        raise ValueError(f"unknown solve_ivp method {method!r}; allowed: {', '.join(methods)}")
    _positive("rtol", rtol)
    _positive("atol", atol)
    t_eval = [float(v) for v in t_eval]
    if not t_eval or min(t_eval) < t0:
        raise ValueError(f"t_eval must be a non-empty list of times >= t0 = {t0} s, got {t_eval}")
    shapes = [uk.shape for uk in u0]
    sizes = [uk.numel() for uk in u0]
    like = u0[0]

    def unflat(y: np.ndarray) -> State:
        parts = torch.from_numpy(np.ascontiguousarray(y)).split(sizes)
        return [p.view(sh).to(dtype=like.dtype, device=like.device) for p, sh in zip(parts, shapes)]

    def flat(state: State) -> np.ndarray:
        return torch.cat([v.detach().reshape(-1).to("cpu", torch.float64) for v in state]).numpy()

    def fun(t, y):
        return flat(rhs(t, unflat(y)))

    with torch.no_grad():
        sol = solve_ivp(fun, (t0, max(t_eval)), flat(u0), method=method, t_eval=sorted(t_eval), rtol=rtol, atol=atol)
    if not sol.success:
        raise ConvergenceError(f"solve_ivp failed: {sol.message}")
    order = np.argsort(t_eval)
    out: list = [None] * len(t_eval)
    for j, idx in enumerate(order):
        out[idx] = unflat(sol.y[:, j])
    return out
