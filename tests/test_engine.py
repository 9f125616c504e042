"""The ideal EP engine against independent references: autograd of Φ and BPTT (float64)."""

import math

import numpy as np
import pytest
import torch
from oracles import assert_step_is_sigma_of_autograd

from neuromorph.bptt import bptt_gradients, bptt_truncated
from neuromorph.dynamics import relax
from neuromorph.estimators import OneSided, RandomSign, Symmetric, combine_phi_grads, ep_gradients
from neuromorph.network import LayeredNetwork

F64 = torch.float64
SIZES = {"mse": [20, 16, 12, 4], "xent": [20, 16, 12, 4]}


def make(loss, act="half_hard_sigmoid", seed=1, scale=1.0):
    net = LayeredNetwork(SIZES[loss], loss=loss, activation=act, dtype=F64, seed=seed, init_scale=scale)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(8, 20, generator=g, dtype=F64)
    y = torch.randint(0, 4, (8,), generator=g)
    return net, x, y


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("act", ["half_hard_sigmoid", "sigmoid4", "tanh"])
def test_explicit_step_equals_sigma_of_autograd_phi(loss, act):
    """s ← σ(∂Φ/∂s − β∂ℓ/∂s): the explicit step against autograd of Φ and ℓ, per-sample ±β."""
    net, x, y = make(loss, act)
    g = torch.Generator().manual_seed(5)
    state = [torch.rand(8, n, generator=g, dtype=F64) * 1.2 - 0.1 for n in net.state_sizes]
    beta = torch.tensor([0.0, 0.3, -0.3, 1.0, -1.0, 0.05, 2.0, -0.7], dtype=F64).unsqueeze(1)
    assert_step_is_sigma_of_autograd(net, x, y, state, beta)


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_explicit_phi_param_grads_equal_autograd(loss):
    net, x, y = make(loss)
    g = torch.Generator().manual_seed(3)
    states = [torch.rand(16, n, generator=g, dtype=F64) for n in net.state_sizes]  # 2 phases of 8
    coefs = torch.randn(16, 1, generator=g, dtype=F64)
    explicit = combine_phi_grads(net, x, states, coefs, batch=8)
    params = [p.detach().requires_grad_(True) for p in net.param_list()]
    x2 = x.repeat(2, 1)
    phi = (net.phi(x2, states, params) * coefs.squeeze(1)).sum() / 8
    ref = torch.autograd.grad(phi, params[: len(explicit)])
    for e, r in zip(explicit, ref):
        torch.testing.assert_close(e, r, rtol=0, atol=1e-12)


def converged_free(net, x, T):
    res = relax(net, net.input_drive(x), net.zero_state(x.shape[0]), T)
    assert res.residual.max().item() < 1e-12, "free phase did not converge: the EP/BPTT comparison is void"
    return res


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("act", ["half_hard_sigmoid", "sigmoid4"])
def test_symmetric_ep_matches_bptt(loss, act):
    """The theorem: symmetric EP with small β equals the BPTT gradient after a converged free phase."""
    net, x, y = make(loss, act)
    T = 300
    free = converged_free(net, x, T)
    ref, _, _ = bptt_gradients(net, x, y, T)
    # the hard sigmoid needs β small enough that no unit crosses a kink (docs/theory.md, fact 4)
    beta = 1e-3 if act == "sigmoid4" else 1e-4
    ep = ep_gradients(net, x, y, Symmetric(beta), T, 300, free=free)
    assert ep.nudged.residual.max().item() < 1e-10
    for i, (a, b) in enumerate(zip(ep.grads, ref)):
        assert cos(a, b) >= 0.9999, f"param {i}: cosine {cos(a, b)}"
        assert rel(a, b) <= 1e-3, f"param {i}: relative error {rel(a, b)}"


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("act", ["half_hard_sigmoid", "sigmoid4"])
def test_step_by_step_ep_matches_truncated_bptt(loss, act):
    """Fig. 1d / App. B: EP truncated at nudged step t equals BPTT over the last t steps (β → 0)."""
    net, x, y = make(loss, act)
    T, K, beta = 200, 12, 1e-5
    free = converged_free(net, x, T)
    bptt = bptt_truncated(net, x, y, T, K)
    ep = ep_gradients(net, x, y, Symmetric(beta), T, K, free=free, record_nudged=True)
    from neuromorph.estimators import estimate_from_states

    for t in range(1, K + 1):
        est = estimate_from_states(net, x, y, free.state, ep.nudged.trajectory[t], ep.plan, 8)
        n = len(est) - (1 if net.readout is not None else 0)  # the read-out has no time structure
        for i in range(n):
            scale = max(b.abs().max().item() for b in bptt[-1][:n])
            err = (est[i] - bptt[t - 1][i]).abs().max().item() / scale
            assert err < 1e-6, f"t={t} param {i}: max error {err:.2e} (relative to gradient scale)"


def test_bptt_truncated_sums_to_full_bptt():
    net, x, y = make("mse", "sigmoid4")
    T = 40
    full, _, _ = bptt_gradients(net, x, y, T)
    trunc = bptt_truncated(net, x, y, T, T)
    for a, b in zip(trunc[-1], full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def ep_error(net, x, y, est, T, K, ref, free):
    g = ep_gradients(net, x, y, est, T, K, free=free).grads
    return sum(((a - b) ** 2).sum().item() for a, b in zip(g, ref)) ** 0.5 / sum(
        (b**2).sum().item() for b in ref) ** 0.5


def test_bias_orders_smooth_activation():
    """Lemma 2: one-sided error ∝ β, symmetric ∝ β² (smooth σ; log-log slopes)."""
    net, x, y = make("mse", "sigmoid4")
    T = 300
    free = converged_free(net, x, T)
    ref, _, _ = bptt_gradients(net, x, y, T)
    betas = np.array([0.04, 0.02, 0.01, 0.005])
    e1 = [ep_error(net, x, y, OneSided(b), T, 300, ref, free) for b in betas]
    e2 = [ep_error(net, x, y, Symmetric(b), T, 300, ref, free) for b in betas]
    s1 = np.polyfit(np.log(betas), np.log(e1), 1)[0]
    s2 = np.polyfit(np.log(betas), np.log(e2), 1)[0]
    assert abs(s1 - 1) < 0.1, f"one-sided slope {s1:.3f}"
    assert abs(s2 - 2) < 0.1, f"symmetric slope {s2:.3f}"


def test_hard_sigmoid_symmetric_far_below_one_sided():
    """Eq. 43 activation: kinks make the error piecewise in β, but the symmetric estimate stays
    below the one-sided one on average over networks, and far below once no unit crosses a kink."""
    ratios = {b: [] for b in (0.5, 0.1, 0.01, 1e-4)}
    for seed in (1, 2, 3):
        net = LayeredNetwork(SIZES["mse"], loss="mse", activation="half_hard_sigmoid", dtype=F64, seed=seed)
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.rand(64, 20, generator=g, dtype=F64)
        y = torch.randint(0, 4, (64,), generator=g)
        T = 300
        free = converged_free(net, x, T)
        ref, _, _ = bptt_gradients(net, x, y, T)
        for b in ratios:
            e1 = ep_error(net, x, y, OneSided(b), T, 300, ref, free)
            e2 = ep_error(net, x, y, Symmetric(b), T, 300, ref, free)
            ratios[b].append(e2 / e1)
    for b, r in ratios.items():
        assert np.mean(r) < 0.9, f"beta={b}: symmetric/one-sided error ratios {r}"
    assert max(ratios[1e-4]) < 1e-2, ratios[1e-4]


def test_random_sign_draws_both_signs_and_is_one_sided():
    gen = torch.Generator().manual_seed(0)
    signs = {RandomSign(0.5).plan(gen).betas[0] for _ in range(50)}
    assert signs == {0.5, -0.5}
    net, x, y = make("xent")
    free = relax(net, net.input_drive(x), net.zero_state(8), 100)
    r = ep_gradients(net, x, y, RandomSign(0.1), 100, 20, free=free, generator=torch.Generator().manual_seed(1))
    o = ep_gradients(net, x, y, OneSided(r.plan.betas[0] if r.plan.betas[0] > 0 else 0.1), 100, 20, free=free)
    if r.plan.betas[0] > 0:
        for a, b in zip(r.grads, o.grads):
            torch.testing.assert_close(a, b)


def test_two_cycle_is_reported_not_hidden():
    """docs/theory.md, fact 3: strong coupling makes synchronous updates oscillate; the residual says so.

    Two units with mutual inhibition w = -3 and bias 1: (0,0) -> (1,1) -> (0,0) -> ... forever.
    """
    net = LayeredNetwork([3, 1, 1], loss="mse", activation="hard_sigmoid", dtype=F64, init_scale=0.0)
    with torch.no_grad():
        net.params[1].fill_(1.0)
        net.params[2].fill_(-3.0)
        net.params[3].fill_(1.0)
    x = torch.zeros(4, 3, dtype=F64)
    res = relax(net, net.input_drive(x), net.zero_state(4), 401)
    assert res.residual.min().item() == 1.0
    assert not res.converged(1e-6).any()


def test_relax_does_not_modify_initial_state():
    net, x, y = make("mse")
    s0 = [torch.rand(8, n, dtype=F64) for n in net.state_sizes]
    copy = [t.clone() for t in s0]
    relax(net, net.input_drive(x), s0, 5, y=y, beta=0.5)
    for a, b in zip(s0, copy):
        assert torch.equal(a, b)


def test_single_hidden_layer_mse_and_bad_sizes():
    net = LayeredNetwork([5, 3], loss="mse", dtype=F64)
    x = torch.rand(2, 5, dtype=F64)
    r = relax(net, net.input_drive(x), net.zero_state(2), 3)
    assert r.state[0].shape == (2, 3)
    with pytest.raises(ValueError, match="sizes"):
        LayeredNetwork([5, 3], loss="xent")
    with pytest.raises(ValueError, match="loss"):
        LayeredNetwork([5, 3], loss="hinge")
    with pytest.raises(ValueError, match="activation"):
        LayeredNetwork([5, 3], activation="relu6")
    assert math.isfinite(float(r.residual.max()))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_bfloat16_relaxation_keeps_the_estimate_in_full_precision(kind):
    """The bf16 option relaxes with bfloat16 weight copies; the estimate comes back in the network's dtype
    and stays close to the full-precision one (bf16 has an 8-bit mantissa: cosine > 0.98)."""
    if kind == "conv":
        net = LayeredNetwork([10], loss="xent", input_shape=(1, 8, 8), conv=[(4, 3, 1)], seed=0)
        x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    else:
        net = LayeredNetwork([20, 32, 16, 10], loss="xent", seed=0)
        x = torch.rand(16, 20, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    full = ep_gradients(net, x, y, Symmetric(0.5), 30, 10)
    low = ep_gradients(net, x, y, Symmetric(0.5), 30, 10, precision="bfloat16")
    assert all(s.dtype == torch.float32 for s in low.free.state + low.nudged.state)
    for a, b in zip(full.grads, low.grads):
        assert b.dtype == torch.float32
        assert float((a * b).sum() / (a.norm() * b.norm())) > 0.98
        assert not torch.equal(a, b)  # the relaxation really ran in bfloat16
    with pytest.raises(ValueError, match="unknown relaxation precision 'fp8'"):
        ep_gradients(net, x, y, Symmetric(0.5), 3, 2, precision="fp8")
