"""Dropout for convergent RNNs (App. F.3): the dynamics are the gradient of Φ(m̃ ⊙ s), masks are
per example and fixed within an iteration, the expected activity is unchanged, and EP with
dropout still equals BPTT with the same masks."""

import pytest
import torch
from oracles import assert_step_is_sigma_of_autograd

from neuromorph.bptt import bptt_gradients
from neuromorph.dynamics import relax
from neuromorph.estimators import Symmetric, ep_gradients
from neuromorph.network import LayeredNetwork

F64 = torch.float64


def make(loss="xent", act="sigmoid4", p=(0.0, 0.3)):
    net = LayeredNetwork([20, 16, 12, 4], loss=loss, activation=act, dtype=F64, seed=1, dropout=p)
    g = torch.Generator().manual_seed(4)
    return net, torch.rand(8, 20, generator=g, dtype=F64), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_dropout_step_is_gradient_of_masked_phi(loss):
    net, x, y = make(loss, "half_hard_sigmoid", p=(0.25, 0.5) if loss == "xent" else (0.25, 0.5, 0.0))
    masks = net.sample_dropout_masks(8, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    state = [torch.rand(8, n, generator=g, dtype=F64) for n in net.state_sizes]
    beta = torch.linspace(-1, 1, 8, dtype=F64).unsqueeze(1)
    assert_step_is_sigma_of_autograd(net, x, y, state, beta, masks)


def test_masks_per_example_scaled_and_expected_activity_unchanged():
    net = LayeredNetwork([5, 400, 3], loss="xent", dtype=F64, dropout=(0.1,))
    a = net.sample_dropout_masks(500, torch.Generator().manual_seed(0))[0]
    b = net.sample_dropout_masks(500, torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b)  # the same seed gives the same masks
    assert set(torch.unique(a).tolist()) == {0.0, 1 / 0.9}
    assert not torch.equal(a[0], a[1])  # different across the examples of a batch
    drop = (a == 0).double().mean().item()
    n = a.numel()
    assert abs(drop - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    # E[m̃ ⊙ s] = s: the mean over examples of m̃ is 1 within sampling error, for every unit
    s = torch.rand(400, dtype=F64)
    mean_act = (a * s).mean(0)
    assert ((mean_act - s).abs() / s).mean().item() < 0.03


def test_masks_fixed_within_an_iteration():
    """Dropped units are silent (to their neighbours) in the free phase, both nudged phases and the update."""
    net, x, y = make("xent", p=(0.0, 0.5))
    masks = net.sample_dropout_masks(8, torch.Generator().manual_seed(2))
    res = ep_gradients(net, x, y, Symmetric(0.1), 60, 20, masks=masks)
    dropped = masks[1] == 0
    for st in (net.masked(res.free.state, masks)[1], net.masked(res.nudged.state, [None, masks[1].repeat(2, 1)])[1]):
        rows = st.shape[0] // 8
        assert torch.all(st[dropped.repeat(rows, 1)] == 0)
    # a unit dropped for every example receives no update of its incoming weights
    always = dropped.all(0)
    if always.any():
        assert torch.all(res.grads[2][always] == 0)


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_ep_with_dropout_matches_bptt_with_the_same_masks(loss):
    net, x, y = make(loss, "sigmoid4", p=(0.2, 0.3) if loss == "xent" else (0.2, 0.3, 0.0))
    masks = net.sample_dropout_masks(8, torch.Generator().manual_seed(3))
    T = 300
    free = relax(net, net.input_drive(x), net.zero_state(8), T, masks=masks)
    assert free.residual.max().item() < 1e-12
    ref, _, _ = bptt_gradients(net, x, y, T, masks=masks)
    ep = ep_gradients(net, x, y, Symmetric(1e-3), T, 300, masks=masks)
    for i, (a, b) in enumerate(zip(ep.grads, ref)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item()
        assert cos > 0.9999 and ((a - b).norm() / b.norm()).item() < 1e-3, (i, cos)


def test_dropout_config_trains(tmp_path):
    from neuromorph.config import ConfigError, load_config
    from neuromorph.train import Trainer

    cfg = load_config(None, ["model.layers=[64,64,10]", "model.loss=xent", "model.dropout=[0.1]", "train.epochs=3",
                             "ep.T=20", "ep.K=6", "train.progress=false", f"output.dir={str(tmp_path)!r}"])
    hist = Trainer(cfg).fit(log=None)
    assert hist[-1]["test_acc"] > 0.8
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(None, ["model.dropout=[1.0]"])
    with pytest.raises(ValueError, match="one probability"):
        Trainer(load_config(None, ["model.dropout=[0.1, 0.1, 0.1]", f"output.dir={str(tmp_path)!r}"]))
