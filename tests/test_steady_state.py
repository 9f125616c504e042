"""The ideal engine's steady-state stop (``relax(tol=...)``, ``ep.steady_tol``)."""

from __future__ import annotations

import pytest
import torch

from neuromorph.config import ConfigError, load_config
from neuromorph.dynamics import relax
from neuromorph.network import LayeredNetwork
from neuromorph.train import Trainer

F64 = torch.float64


def _net():
    torch.manual_seed(0)
    net = LayeredNetwork([20, 16, 5], loss="mse", activation="sigmoid4", seed=1, dtype=F64)
    x = torch.rand(12, 20, dtype=F64)
    return net, net.input_drive(x)


def test_relax_stops_at_the_steady_state():
    """With ``tol`` the phase ends after the first step at which every sample moved at most ``tol``: fewer steps,
    a residual within ``tol``, the state of the fixed-step phase to about ``tol``; each step before the stop was
    above it (the stop is the first such step)."""
    net, d = _net()
    full = relax(net, d, net.zero_state(12), 200)
    assert full.steps == 200 and float(full.residual.max()) < 1e-12  # this net contracts
    stop = relax(net, d, net.zero_state(12), 200, tol=1e-6)
    assert 5 < stop.steps < 100
    assert float(stop.residual.max()) <= 1e-6
    err = max(float((a - b).abs().max()) for a, b in zip(stop.state, full.state))
    assert err < 1e-5
    before = relax(net, d, net.zero_state(12), stop.steps - 1)
    assert float(before.residual.max()) > 1e-6
    # the states of fixed steps of that length (the stop changes nothing but the length; the fixed-step phase may
    # run the compiled loop, equal to rounding)
    same = relax(net, d, net.zero_state(12), stop.steps)
    for a, b in zip(same.state, stop.state):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # a tolerance never reached: all the steps
    assert relax(net, d, net.zero_state(12), 7, tol=1e-30).steps == 7
    with pytest.raises(ValueError, match="tol = -1"):
        relax(net, d, net.zero_state(12), 10, tol=-1)


def test_training_with_the_steady_state_stop(tmp_path):
    """``ep.steady_tol`` stops every phase early and reports the steps taken per phase; the run learns as the
    fixed-step run does."""
    base = ["model.layers=[64, 32, 10]", "model.loss=mse", "ep.T=60", "ep.K=20", "train.epochs=2",
            "train.progress=false", "data.n_train=400", "data.n_test=200", "train.lr=[0.2, 0.1]",
            "output.checkpoint=false"]
    fixed = Trainer(load_config(None, [*base, f"output.dir={str(tmp_path / 'a')!r}"])).fit(log=None)
    stop = Trainer(load_config(None, [*base, "ep.steady_tol=1e-4", f"output.dir={str(tmp_path / 'b')!r}"]))
    hist = stop.fit(log=None)
    assert "free_steps" not in fixed[-1]
    assert 0 < hist[-1]["free_steps"] < 60 and 0 < hist[-1]["nudged_steps"] < 20
    assert hist[-1]["test_acc"] == pytest.approx(fixed[-1]["test_acc"], abs=0.03)
    with pytest.raises(ConfigError, match="ep.steady_tol"):
        load_config(None, ["ep.steady_tol=-1"])
