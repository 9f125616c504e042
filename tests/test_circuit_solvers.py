"""Circuit settling (neuromorph.circuit): the node ODE τ du/dt = z(g(u)) − u against the discrete EP
iteration, SciPy's solve_ivp, convergence orders and the Lyapunov energy (float64, fixed seeds)."""

import math

import numpy as np
import pytest
import torch

from neuromorph.circuit import (
    RK4,
    Bosh3,
    Dopri5,
    Euler,
    FixedTime,
    Heun,
    NodeField,
    SteadyState,
    node_from_state,
    settle,
    solve_ivp_reference,
    time_constant,
)
from neuromorph.dynamics import ConvergenceError, ideal_field, relax
from neuromorph.energy import lyapunov_energy, lyapunov_rate
from neuromorph.network import LayeredNetwork

torch.set_num_threads(1)
F64 = torch.float64
TAU = time_constant(1e-12, 1e-6)  # 1 pF / 1 µS = 1 µs
B = 8


def make(loss="mse", act="half_hard_sigmoid", scale=0.8, conv=False, seed=0):
    if conv:
        net = LayeredNetwork([10, 4], loss=loss, activation=act, init_scale=scale, dtype=F64, seed=seed,
                             input_shape=(1, 8, 8), conv=[(3, 3, 1)])
    else:
        net = LayeredNetwork([20, 16, 12, 4], loss=loss, activation=act, init_scale=scale, dtype=F64, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(B, *net.input_shape, generator=g, dtype=F64)
    y = torch.randint(0, 4, (B,), generator=g)
    return net, x, y


def zeros(net):
    return net.zero_state(B)


def max_err(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a, b))


BETA = torch.tensor([0.5, -0.5, 0.1, -0.1, 1.0, -1.0, 0.3, -0.3], dtype=F64).unsqueeze(1)
CASES = [("mse", "half_hard_sigmoid", False), ("xent", "sigmoid4", False), ("mse", "tanh", False),
         ("mse", "half_hard_sigmoid", True), ("xent", "sigmoid4", True)]


# ------------------------------------------------------------------------------------------ 1. Euler(τ) = relax
@pytest.mark.parametrize("loss,act,conv", CASES)
def test_euler_with_dt_tau_is_the_discrete_iteration(loss, act, conv):
    """u_{n+1} = z(g(u_n)): n Euler steps of τ reproduce relax() from s_0 = g(u_0), free then nudged (±β column)."""
    net, x, y = make(loss, act, conv=conv)
    drive = net.input_drive(x)
    g = torch.Generator().manual_seed(7)
    u0 = [torch.randn(B, *sh, generator=g, dtype=F64) for sh in net.state_shapes]
    n = 12
    free = settle(ideal_field(net, drive, tau=TAU), u0, solver=Euler(TAU), stop=FixedTime(n * TAU))
    ref = relax(net, drive, [net.act.unit_fn(v) for v in u0], n)
    assert free.n_steps == n and free.reason == "t_end" and free.converged is None
    assert max_err(free.s, ref.state) < 1e-12
    nudged = settle(ideal_field(net, drive, tau=TAU, y=y, beta=BETA), free.u, solver=Euler.in_tau(1.0, TAU),
                    stop=FixedTime(n * TAU))
    ref_n = relax(net, drive, ref.state, n, y=y, beta=BETA)
    assert nudged.n_steps == n
    assert max_err(nudged.s, ref_n.state) < 1e-12


# ------------------------------------------------------------------------------------------ 2. steady states
SOLVERS = [Euler.in_tau(0.5, TAU), Heun.in_tau(0.5, TAU), RK4.in_tau(0.5, TAU),
           Bosh3(rtol=1e-7, atol=1e-10, dt_max=TAU), Dopri5(rtol=1e-8, atol=1e-10, dt_max=TAU)]


@pytest.mark.parametrize("loss,act", [("mse", "half_hard_sigmoid"), ("xent", "sigmoid4")])
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_steady_state_is_the_discrete_fixed_point(solver, loss, act):
    net, x, y = make(loss, act)
    drive = net.input_drive(x)
    ref = relax(net, drive, zeros(net), 400)
    assert ref.residual.max() < 1e-14
    res = settle(ideal_field(net, drive, tau=TAU), zeros(net), solver=solver, stop=SteadyState(1e-10, 300 * TAU))
    assert res.reason == "converged" and bool(res.converged.all()) and res.residual.max() < 1e-10
    assert torch.all(res.settling_time <= res.t) and res.t < 300 * TAU
    assert max_err(res.s, ref.state) < 1e-8
    # nudged phase from the free steady state (its u), ±β in one batch
    ref_n = relax(net, drive, ref.state, 400, y=y, beta=BETA)
    nud = settle(ideal_field(net, drive, tau=TAU, y=y, beta=BETA), res.u, solver=solver,
                 stop=SteadyState(1e-10, 300 * TAU))
    assert bool(nud.converged.all())
    assert max_err(nud.s, ref_n.state) < 1e-8


# ------------------------------------------------------------------------------------------ 3. against solve_ivp
@pytest.mark.parametrize("loss,act", [("mse", "tanh"), ("xent", "sigmoid4")])
def test_adaptive_matches_solve_ivp(loss, act):
    """Dopri5 (rtol 1e-10, atol 1e-12) and Bosh3 vs SciPy DOP853 (rtol 1e-12, atol 1e-14) at 5 times, nudged phase."""
    net, x, y = make(loss, act)
    drive = net.input_drive(x)
    rhs = ideal_field(net, drive, tau=TAU, y=y, beta=BETA)
    g = torch.Generator().manual_seed(3)
    u0 = [0.5 * torch.randn(B, n, generator=g, dtype=F64) for n in net.state_sizes]
    times = [0.1 * TAU, 0.5 * TAU, 1.0 * TAU, 3.0 * TAU, 8.0 * TAU]
    ref = solve_ivp_reference(rhs, u0, times, method="DOP853", rtol=1e-12, atol=1e-14)
    for solver, tol in [(Dopri5(rtol=1e-10, atol=1e-12), 1e-8), (Bosh3(rtol=1e-8, atol=1e-10), 1e-6)]:
        res = settle(rhs, u0, solver=solver, stop=FixedTime(times[-1]), save_at=times)
        assert res.times == times and res.n_rejected >= 0
        errs = [max_err(a, b) for a, b in zip(res.trajectory, ref)]
        assert max(errs) < tol, (type(solver).__name__, errs)
    # the RK45 reference agrees with the DOP853 one
    ref45 = solve_ivp_reference(rhs, u0, times[-1:], method="RK45", rtol=1e-10, atol=1e-12)
    assert max_err(ref45[0], ref[-1]) < 1e-8


# ------------------------------------------------------------------------------------------ 4. orders
def _slope(dts, errs):
    return float(np.polyfit(np.log(dts), np.log(errs), 1)[0])


@pytest.mark.parametrize("cls,fractions,order,band", [
    (Euler, [0.1, 0.05, 0.025, 0.0125], 1, 0.2),
    (Heun, [0.2, 0.1, 0.05, 0.025], 2, 0.2),
    (RK4, [0.125, 0.0625, 0.03125, 0.015625], 4, 0.3),
])
def test_order_of_convergence(cls, fractions, order, band):
    """Fitted log-log slope of the error at t = 2τ against dt (smooth tanh network, nudged)."""
    net, x, y = make("mse", "tanh", scale=1.0)
    rhs = ideal_field(net, net.input_drive(x), tau=TAU, y=y, beta=BETA)
    g = torch.Generator().manual_seed(4)
    u0 = [torch.randn(B, n, generator=g, dtype=F64) for n in net.state_sizes]
    t1 = 2 * TAU
    ref = solve_ivp_reference(rhs, u0, [t1], rtol=1e-13, atol=1e-15)[0]
    errs = []
    for fr in fractions:
        res = settle(rhs, u0, solver=cls.in_tau(fr, TAU), stop=FixedTime(t1))
        assert res.n_steps == round(2 / fr)
        errs.append(max_err(res.u, ref))
    slope = _slope([fr * TAU for fr in fractions], errs)
    assert abs(slope - order) < band, (slope, errs)


# ------------------------------------------------------------------------------------------ 5. energy
@pytest.mark.parametrize("act", ["sigmoid4", "tanh", "half_hard_sigmoid"])
def test_lyapunov_energy_never_increases(act):
    """E = Σ (Ĝ(s) − o s)/γ − Φ(x, s) is non-increasing along Euler(0.01τ), free phase; dE/dt matches."""
    net, x, _ = make("mse", act, scale=1.0)
    rhs = ideal_field(net, net.input_drive(x), tau=TAU)
    g = torch.Generator().manual_seed(5)
    u0 = [torch.randn(B, n, generator=g, dtype=F64) for n in net.state_sizes]
    res = settle(rhs, u0, solver=Euler.in_tau(0.01, TAU), stop=FixedTime(8 * TAU), record=True)
    energy = torch.stack([lyapunov_energy(net, x, rhs.state(u)) for u in res.trajectory])  # (T, B)
    d = energy.diff(dim=0)
    assert d.max() <= 1e-12, d.max()
    assert torch.all(energy[-1] < energy[0] - 1e-3)
    # the analytic rate −(τ/γ) Σ g'(u)(du/dt)² against a central difference of E along the trajectory
    if act != "half_hard_sigmoid":
        h = res.times[1] - res.times[0]
        for i in (10, 100, 400):
            rate = lyapunov_rate(net, res.trajectory[i], rhs(0.0, res.trajectory[i]), TAU)
            fd = (energy[i + 1] - energy[i - 1]) / (2 * h)
            assert torch.allclose(fd, rate, rtol=0.03, atol=1e-3 / TAU)


def test_nudged_energy_never_increases():
    """With the nudge inside σ the nudged phase is a gradient system too: E + βℓ decreases (mse and xent)."""
    for loss in ("mse", "xent"):
        net, x, y = make(loss, "sigmoid4", scale=1.0)
        rhs = ideal_field(net, net.input_drive(x), tau=TAU, y=y, beta=BETA)
        u0 = [torch.zeros(B, n, dtype=F64) for n in net.state_sizes]
        res = settle(rhs, u0, solver=Euler.in_tau(0.02, TAU), stop=FixedTime(4 * TAU), record=True)
        e = torch.stack([lyapunov_energy(net, x, rhs.state(u), y=y, beta=BETA) for u in res.trajectory])
        assert e.diff(dim=0).max() <= 1e-12


# ------------------------------------------------------------------------------------------ 6. steady-state stop
@pytest.mark.parametrize("freeze", [False, True])
def test_settling_time_of_a_leaky_node(freeze):
    """Decoupled nodes z = c: u(t) = c + (u0 − c) e^{−t/τ}, residual |c − u| < tol at t* = τ ln(|c − u0|/tol)."""
    c = torch.tensor([[0.1], [1.0], [10.0], [-3.0]], dtype=F64)
    rhs = NodeField(target=lambda s: [c.expand(-1, 3)], unit=torch.sigmoid, tau=TAU)
    u0 = [torch.zeros(4, 3, dtype=F64)]
    tol, dt = 1e-6, 0.01 * TAU
    res = settle(rhs, u0, solver=RK4(dt), stop=SteadyState(tol, 50 * TAU, freeze=freeze))
    t_star = TAU * torch.log(c.abs().squeeze(1) / tol)
    assert res.reason == "converged" and bool(res.converged.all())
    assert torch.all(res.settling_time >= t_star) and torch.all(res.settling_time <= t_star + dt * 1.0001)
    assert res.t == pytest.approx(float(res.settling_time.max()))
    if freeze:  # a frozen node keeps the value it had when it converged
        first = int(res.settling_time.argmin())
        expected = c[first] * (1 - math.exp(-float(res.settling_time[first]) / TAU))
        assert torch.allclose(res.u[0][first], expected.expand(3), rtol=1e-9, atol=0)
        assert torch.all(res.residual < tol)


def test_not_converged_is_reported():
    net, x, _ = make("mse", "half_hard_sigmoid")
    rhs = ideal_field(net, net.input_drive(x), tau=TAU)
    res = settle(rhs, zeros(net), solver=Dopri5(), stop=SteadyState(1e-9, 0.5 * TAU))
    assert res.reason == "t_max" and res.t == pytest.approx(0.5 * TAU)
    assert not bool(res.converged.any()) and bool(torch.isnan(res.settling_time).all())
    # large weights: the discrete iteration (Euler, dt = τ) has a 2-cycle, the continuous circuit settles
    net, x, _ = make("mse", "hard_sigmoid", scale=8.0)
    drive = net.input_drive(x)
    cycling = relax(net, drive, zeros(net), 300).residual > 1e-6
    assert 0 < int(cycling.sum()) < B
    rhs = ideal_field(net, drive, tau=TAU)
    euler = settle(rhs, zeros(net), solver=Euler(TAU), stop=SteadyState(1e-9, 300 * TAU))
    assert euler.reason == "t_max"
    assert torch.equal(euler.converged, ~cycling) and bool(torch.isnan(euler.settling_time[cycling]).all())
    rk4 = settle(rhs, zeros(net), solver=RK4.in_tau(0.2, TAU), stop=SteadyState(1e-9, 300 * TAU))
    assert rk4.reason == "converged" and bool(rk4.converged.all())
    # max_steps stops an adaptive solve: reported for a steady-state stop, an error for a fixed time
    short = settle(rhs, zeros(net), solver=Dopri5(max_steps=3), stop=SteadyState(1e-9, 300 * TAU))
    assert short.reason == "max_steps" and short.n_steps + short.n_rejected == 3 and not bool(short.converged.any())
    with pytest.raises(ConvergenceError, match="max_steps=3"):
        settle(rhs, zeros(net), solver=Dopri5(max_steps=3), stop=FixedTime(300 * TAU))


def test_divergence_raises():
    rhs = NodeField(target=lambda s: [torch.exp(50 * s[0])], unit=lambda u: u, tau=1.0)
    with pytest.raises(ConvergenceError, match="non-finite"):
        settle(rhs, [torch.ones(2, 2, dtype=F64)], solver=Euler(1.0), stop=FixedTime(100.0))


def test_record_and_save_at():
    net, x, _ = make("mse", "sigmoid4")
    rhs = ideal_field(net, net.input_drive(x), tau=TAU)
    res = settle(rhs, zeros(net), solver=RK4.in_tau(0.25, TAU), stop=FixedTime(2 * TAU), record=True)
    assert len(res.trajectory) == res.n_steps + 1 == 9 and res.times[-1] == 2 * TAU
    assert res.n_evals == 1 + 4 * res.n_steps
    saved = settle(rhs, zeros(net), solver=RK4.in_tau(0.25, TAU), stop=FixedTime(2 * TAU), save_at=[0.0, TAU])
    assert saved.times == [0.0, TAU] and saved.t == 2 * TAU
    assert max_err(saved.trajectory[1], res.trajectory[4]) < 1e-14
    later = settle(rhs, zeros(net), solver=RK4.in_tau(0.25, TAU), stop=FixedTime(2 * TAU), t0=5 * TAU)
    assert later.t == pytest.approx(7 * TAU) and max_err(later.u, res.u) < 1e-14  # autonomous field


# ------------------------------------------------------------------------------------------ 7. bad inputs
@pytest.mark.parametrize("make_bad,match", [
    (lambda: Euler(0.0), r"Euler.dt \(s\) must be a finite number > 0, got 0.0"),
    (lambda: RK4(-1e-6), r"RK4.dt \(s\) must be a finite number > 0, got -1e-06"),
    (lambda: Heun(float("nan")), r"Heun.dt .* got nan"),
    (lambda: Euler.in_tau(0.0, TAU), r"dt_over_tau must be a finite number > 0, got 0.0"),
    (lambda: Dopri5(rtol=0.0), r"Dopri5.rtol must be a finite number > 0, got 0.0"),
    (lambda: Bosh3(atol=-1.0), r"Bosh3.atol must be a finite number > 0, got -1.0"),
    (lambda: Dopri5(dt0=0.0), r"Dopri5.dt0 \(s\) must be a finite number > 0 or None, got 0.0"),
    (lambda: Dopri5(max_steps=0), r"max_steps must be an integer >= 1, got 0"),
    (lambda: Dopri5(safety=1.5), r"safety must be in \(0, 1\), got 1.5"),
    (lambda: SteadyState(0.0, 1.0), r"SteadyState.tol must be a finite number > 0, got 0.0"),
    (lambda: SteadyState(1e-9, 0.0), r"SteadyState.t_max \(s\) must be a finite number > 0, got 0.0"),
    (lambda: SteadyState(1e-9, 1.0, freeze="yes"), r"freeze must be True or False, got 'yes'"),
    (lambda: FixedTime(-1.0), r"FixedTime.t_end \(s\) must be a finite number > 0, got -1.0"),
    (lambda: time_constant(0.0, 1e-6), r"capacitance \(F\) must be a finite number > 0, got 0.0"),
    (lambda: NodeField(lambda s: s, torch.tanh, tau=0.0), r"tau \(s\) must be a finite number > 0, got 0.0"),
    (lambda: node_from_state("relu", [torch.zeros(1, 1)]), r"unknown unit 'relu'; allowed: clamp01, sigmoid, tanh"),
    (lambda: node_from_state("tanh", [torch.ones(1, 1)]), r"strictly inside"),
])
def test_bad_inputs_raise(make_bad, match):
    with pytest.raises(ValueError, match=match):
        make_bad()


def test_bad_settle_arguments_raise():
    net, x, y = make("mse")
    rhs = ideal_field(net, net.input_drive(x), tau=TAU)
    u0 = zeros(net)
    stop = FixedTime(TAU)
    with pytest.raises(ValueError, match=r"solver must be one of Euler, Heun, RK4, Bosh3, Dopri5, got 'rk4'"):
        settle(rhs, u0, solver="rk4", stop=stop)
    with pytest.raises(ValueError, match=r"stop must be SteadyState or FixedTime, got 1.0"):
        settle(rhs, u0, solver=Euler(TAU), stop=1.0)
    with pytest.raises(ValueError, match=r"save_at times must lie in \[t0, t_end\]"):
        settle(rhs, u0, solver=Euler(TAU), stop=stop, save_at=[2 * TAU])
    with pytest.raises(ValueError, match="exclusive"):
        settle(rhs, u0, solver=Euler(TAU), stop=stop, save_at=[TAU], record=True)
    with pytest.raises(ValueError, match=r"Dopri5 needs dt0"):
        settle(lambda t, u: u, u0, solver=Dopri5(), stop=stop)
    with pytest.raises(ValueError, match="needs targets y"):
        ideal_field(net, net.input_drive(x), tau=TAU, beta=0.5)
    with pytest.raises(ValueError, match=r"unknown solve_ivp method 'Euler'; allowed: RK45, RK23, DOP853"):
        solve_ivp_reference(rhs, u0, [TAU], method="Euler")
    with pytest.raises(ValueError, match=r"rtol must be a finite number > 0, got 0"):
        solve_ivp_reference(rhs, u0, [TAU], rtol=0)


def test_node_from_state_inverts_the_unit():
    g = torch.Generator().manual_seed(0)
    s = [torch.rand(4, 5, generator=g, dtype=F64) * 0.98 + 0.01]
    for unit, fn in [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("clamp01", lambda u: u.clamp(0, 1))]:
        u = node_from_state(unit, s)
        assert torch.allclose(fn(u[0]), s[0], rtol=0, atol=1e-14)
