"""The compiled relaxation loop (neuromorph.fastrelax, ``_relax_kernel.c``) against the torch loop of ``relax``.

Both compute the same steps; they differ by the summation order of the products and by ``exp`` (within 2 ulp), so
the states and residuals agree to 1e-12 in float64 and 1e-6 in float32 for convergent networks of the default
initialisation.
"""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch

from neuromorph import cbuild, fastrelax
from neuromorph.dynamics import relax
from neuromorph.estimators import Symmetric, ep_gradients
from neuromorph.network import LayeredNetwork

F32, F64 = torch.float32, torch.float64
TOL = {F64: 1e-12, F32: 1e-6}
B = 24

requires_kernel = pytest.mark.skipif(not fastrelax.available(), reason=f"compiled loop: {fastrelax.status()}")


@contextlib.contextmanager
def torch_loop():
    """Run ``relax`` on its torch path inside the block."""
    saved = dict(fastrelax._state)
    fastrelax._state.update(lib=None, tried=True, reason="forced by the test")
    try:
        yield
    finally:
        fastrelax._state.clear()
        fastrelax._state.update(saved)


def both(*args, **kwargs):
    """``relax`` on the compiled and on the torch path (the compiled one checked to have run)."""
    fast = fastrelax.try_relax(*args, **kwargs)
    assert fast is not None
    with torch_loop():
        ref = relax(*args, **kwargs)
    return fast, ref


def assert_close(fast, ref, dtype):
    tol = TOL[dtype]
    for a, b in zip(fast.state, ref.state):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=tol, rtol=0)
    torch.testing.assert_close(fast.residual, ref.residual, atol=tol, rtol=0)


def net_of(sizes, loss, act, dtype, **kw):
    return LayeredNetwork(sizes, loss=loss, activation=act, dtype=dtype, seed=3, **kw)


def sizes_of(hidden: int) -> list[int]:
    """``hidden`` layers before the output (mse: a state layer; xent: the read-out). 37 units: the vector loops and
    their scalar tails; 33 posts: blocks of 8 then the last 9 in one pass."""
    return [50, 37, 33][: hidden + 1] + [10]


def inputs(net, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, net.sizes[0], generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, net.n_classes, (B,), generator=g)
    return net.input_drive(x), y


ACTS = ["sigmoid4", "half_hard_sigmoid", "tanh"]


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("hidden", [1, 2])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_free_and_nudged_phases_equal_the_torch_loop(loss, act, hidden, dtype):
    net = net_of(sizes_of(hidden), loss, act, dtype)
    with torch.no_grad():
        drive, y = inputs(net, dtype)
        fast, ref = both(net, drive, net.zero_state(B), 20)
        assert_close(fast, ref, dtype)
        start = ref.state
        # one nudged phase, beta a float
        fast, ref = both(net, drive, start, 8, y=y, beta=0.7)
        assert_close(fast, ref, dtype)
        # the symmetric estimate's +beta and -beta phases as one batch of 2B rows, beta a per-row column
        col = torch.cat([torch.full((B, 1), 0.7), torch.full((B, 1), -0.7)]).to(dtype)
        fast, ref = both(net, drive.repeat(2, 1), [s.repeat(2, 1) for s in start], 8, y=y.repeat(2), beta=col)
        assert_close(fast, ref, dtype)


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_soft_targets_dropout_masks_and_unidirectional_nets(loss, dtype):
    g = torch.Generator().manual_seed(5)
    for uni in (False, True):
        net = net_of(sizes_of(2), loss, "sigmoid4", dtype, unidirectional=uni)
        with torch.no_grad():
            drive, y = inputs(net, dtype, seed=1)
            masks = [((torch.rand(B, n, generator=g) >= 0.3).to(dtype) / 0.7) for n in net.state_sizes]
            masks[1] = None  # a layer without dropout
            targets = torch.softmax(torch.randn(B, net.n_classes, generator=g, dtype=F64), -1).to(dtype)
            free, ref = both(net, drive, net.zero_state(B), 20, masks=masks)
            assert_close(free, ref, dtype)
            fast, ref = both(net, drive, ref.state, 8, y=targets, beta=0.5, masks=masks)
            assert_close(fast, ref, dtype)


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_one_state_layer_and_a_wide_one(loss, dtype):
    """No coupling at all (an mse net of one state layer), and one of 600 units (blocks of 8 posts in a row)."""
    for sizes in ([50, 10], [40, 600, 10]) if loss == "mse" else ([40, 600, 10],):
        net = net_of(sizes, loss, "sigmoid4", dtype)
        with torch.no_grad():
            drive, y = inputs(net, dtype, seed=2)
            fast, ref = both(net, drive, net.zero_state(B), 15)
            assert_close(fast, ref, dtype)
            fast, ref = both(net, drive, ref.state, 6, y=y, beta=-0.4)
            assert_close(fast, ref, dtype)


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_ep_gradients_equal_on_both_paths(loss, dtype):
    net = net_of(sizes_of(2), loss, "sigmoid4", dtype)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(B, net.sizes[0], generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, net.n_classes, (B,), generator=g)
    fast = ep_gradients(net, x, y, Symmetric(0.5), 25, 10)
    with torch_loop():
        ref = ep_gradients(net, x, y, Symmetric(0.5), 25, 10)
    assert len(fast.grads) == len(ref.grads) == len(net.param_list())
    for a, b in zip(fast.grads, ref.grads):
        torch.testing.assert_close(a, b, atol=10 * TOL[dtype], rtol=0)
    assert_close(fast.free, ref.free, dtype)
    assert_close(fast.nudged, ref.nudged, dtype)


@requires_kernel
def test_the_thread_count_does_not_change_the_result():
    """Rows relax independently: the same numbers on one thread and on several."""
    net = net_of([50, 37, 10], "mse", "sigmoid4", F32)
    drive, _ = inputs(net, F32)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastrelax.try_relax(net, drive, net.zero_state(B), 12)
        torch.set_num_threads(max(2, n))
        many = fastrelax.try_relax(net, drive, net.zero_state(B), 12)
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one.state, many.state):
        assert torch.equal(a, b)
    assert torch.equal(one.residual, many.residual)


@requires_kernel
def test_relax_dispatches_to_the_compiled_loop_and_leaves_the_state_alone():
    net = net_of([50, 37, 10], "mse", "sigmoid4", F64)
    drive, y = inputs(net, F64)
    start = [torch.rand(B, n, dtype=F64) for n in net.state_sizes]
    copies = [s.clone() for s in start]
    calls = []
    real = fastrelax.try_relax

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("neuromorph.dynamics.try_relax", spy)
        res = relax(net, drive, start, 5, y=y, beta=0.2)
        assert len(calls) == 1 and res.trajectory is None
        # what the compiled loop does not do runs on the torch path: a trajectory, autograd, a bfloat16 copy
        assert len(relax(net, drive, start, 5, record=True).trajectory) == 6
        relax(net, drive, start, 5, track_grad=True)
        relax(net, drive, start, 5, params=net.param_list())
        assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(start, copies))
    assert relax(net, drive, start, 0).residual is None


def test_not_applicable_returns_none():
    conv = LayeredNetwork([10], loss="mse", activation="half_hard_sigmoid", input_shape=(1, 8, 8), conv=[(2, 3, 1)],
                          seed=0)
    x = torch.rand(3, 1, 8, 8)
    drive = conv.input_drive(x)
    assert fastrelax.try_relax(conv, drive, conv.zero_state(3), 5) is None  # a convolution
    net = net_of([20, 12, 10], "mse", "sigmoid4", F32)
    drive = net.input_drive(torch.rand(3, 20))
    assert fastrelax.try_relax(net, drive.to(torch.bfloat16), net.zero_state(3), 5) is None  # another dtype
    assert fastrelax.try_relax(net, drive.double(), net.zero_state(3), 5) is None  # not the network's dtype
    assert fastrelax.try_relax(net, drive, net.zero_state(3), 0) is None  # zero steps
    big = net_of([20, 400, 400, 10], "mse", "sigmoid4", F32)  # torch's batched products are as fast
    assert fastrelax.try_relax(big, big.input_drive(torch.rand(3, 20)), big.zero_state(3), 5) is None
    with torch_loop():
        assert fastrelax.try_relax(net, drive, net.zero_state(3), 5) is None  # no library
    # conv nets, and labels outside the classes (the torch loop's error), still go through relax
    assert relax(conv, conv.input_drive(x), conv.zero_state(3), 5).state[0].shape == (3, 2, 4, 4)
    with pytest.raises(RuntimeError):
        relax(net, drive, net.zero_state(3), 5, y=torch.tensor([0, 1, 12]), beta=0.1)


def test_kernels_can_be_disabled_and_a_failed_build_warns(monkeypatch, tmp_path):
    net = net_of([20, 12, 10], "mse", "sigmoid4", F32)
    drive = net.input_drive(torch.rand(3, 20))
    monkeypatch.setattr(fastrelax, "_state", {"lib": None, "tried": False, "reason": None})
    monkeypatch.setenv("NEUROMORPH_KERNELS", "0")
    assert fastrelax.try_relax(net, drive, net.zero_state(3), 5) is None
    assert fastrelax.status() == "torch (disabled by NEUROMORPH_KERNELS=0)"
    monkeypatch.setattr(fastrelax, "_state", {"lib": None, "tried": False, "reason": None})
    monkeypatch.setenv("NEUROMORPH_KERNELS", "1")
    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="compiled relaxation loop is not available"):
        res = relax(net, drive, net.zero_state(3), 5)  # the torch loop runs
    assert res.residual.shape == (3,)
    assert "no-such-compiler" in fastrelax.status()
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_the_loop_is_built_where_a_compiler_exists_and_cached(monkeypatch, tmp_path):
    """CI has a C compiler: the compiled loop must then be built (else the tests above skip silently), once: a later
    load finds the library of the first."""
    if shutil.which(cbuild.compiler()[0]) is None:
        pytest.skip(f"no C compiler {cbuild.compiler()[0]!r} on this machine")
    monkeypatch.setenv("NEUROMORPH_KERNELS", "1")
    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path))
    found = []
    for _ in range(2):
        monkeypatch.setattr(fastrelax, "_state", {"lib": None, "tried": False, "reason": None})
        assert fastrelax.status() == "compiled"
        found.append([(f.name, f.stat().st_mtime_ns) for f in (tmp_path / "kernels").glob("relax_kernel_*.so")])
    assert len(found[0]) == 1 and found[0] == found[1]
