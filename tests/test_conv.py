"""Convolutional EP (App. E): explicit conv/pool dynamics against autograd of Φ, pooling round
trips, and EP against BPTT on a small ConvNet (float64)."""

import pytest
import torch
from oracles import assert_step_is_sigma_of_autograd

from neuromorph.bptt import bptt_gradients
from neuromorph.dynamics import relax
from neuromorph.estimators import Symmetric, combine_phi_grads, ep_gradients
from neuromorph.network import ConvPool, LayeredNetwork

F64 = torch.float64


def make(loss, act="half_hard_sigmoid", seed=0, scale=1.0):
    # input 1x12x12 -> conv(4, 3, pad 1) + pool -> 4x6x6 -> conv(6, 3, pad 0) + pool -> 6x2x2 -> fc
    sizes = [16, 5] if loss == "mse" else [16, 5]
    net = LayeredNetwork(sizes, loss=loss, activation=act, dtype=F64, seed=seed, init_scale=scale,
                         input_shape=(1, 12, 12), conv=[(4, 3, 1), (6, 3, 0)])
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.rand(6, 1, 12, 12, generator=g, dtype=F64)
    y = torch.randint(0, 5, (6,), generator=g)
    return net, x, y


def test_shapes():
    net, x, y = make("xent")
    assert net.state_shapes == [(4, 6, 6), (6, 2, 2), (16,)]
    assert net.readout.shape == (5, 16)
    net2, _, _ = make("mse")
    assert net2.state_shapes == [(4, 6, 6), (6, 2, 2), (16,), (5,)]


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("act", ["half_hard_sigmoid", "sigmoid4"])
def test_conv_step_equals_sigma_of_autograd_phi(loss, act):
    net, x, y = make(loss, act)
    g = torch.Generator().manual_seed(1)
    state = [torch.rand(6, *s, generator=g, dtype=F64) for s in net.state_shapes]
    beta = torch.tensor([0.0, 0.4, -0.4, 1.0, -1.0, 0.1], dtype=F64).unsqueeze(1)
    assert_step_is_sigma_of_autograd(net, x, y, state, beta)


def test_conv_phi_param_grads_equal_autograd():
    net, x, y = make("xent")
    g = torch.Generator().manual_seed(2)
    states = [torch.rand(12, *s, generator=g, dtype=F64) for s in net.state_shapes]
    coefs = torch.randn(12, 1, generator=g, dtype=F64)
    explicit = combine_phi_grads(net, x, states, coefs, batch=6)
    params = [p.detach().requires_grad_(True) for p in net.param_list()]
    phi = (net.phi(x.repeat(2, 1, 1, 1), states, params) * coefs.squeeze(1)).sum() / 6
    ref = torch.autograd.grad(phi, params[: len(explicit)])
    for e, r in zip(explicit, ref):
        torch.testing.assert_close(e, r, rtol=0, atol=1e-12)


def test_pool_unpool_round_trip():
    syn = ConvPool(2, 3, 3, padding=1)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=F64)
    x = torch.randn(4, 2, 8, 8, generator=g, dtype=F64)
    z, aux = syn._pool(x, w)
    conv = torch.nn.functional.conv2d(x, w, padding=1)
    u = syn.unpool(z, aux)
    # unpooling puts each max back where it came from and zeros elsewhere (Eq. 20) ...
    assert torch.equal(u[u != 0], conv[u != 0])
    assert int((u != 0).sum()) == z.numel()
    # ... at the argmax indices (Eq. 19), so reading them back returns the pooled tensor
    idx = aux[0]
    assert torch.equal(u.flatten(2).gather(2, idx.flatten(2)).view_as(z), z)
    assert torch.equal(torch.nn.functional.max_pool2d(conv, 2, 2), z)
    # odd sizes: the last row/column is dropped by the pooling and stays zero after unpooling
    z2, aux2 = syn._pool(torch.randn(1, 2, 7, 7, dtype=F64), w)
    assert syn.unpool(z2, aux2).shape == (1, 3, 7, 7)


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_conv_symmetric_ep_matches_bptt(loss):
    net, x, y = make(loss, "sigmoid4", scale=1.0)
    T = 200
    free = relax(net, net.input_drive(x), net.zero_state(6), T)
    assert free.residual.max().item() < 1e-12
    ref, _, _ = bptt_gradients(net, x, y, T)
    ep = ep_gradients(net, x, y, Symmetric(1e-3), T, 200, free=free)
    for i, (a, b) in enumerate(zip(ep.grads, ref)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item()
        assert cos >= 0.999, f"param {i}: cosine {cos}"


def test_convnet_trains_from_config(tmp_path):
    """A ConvNet from TOML (conv_channels/kernels/padding) trains on digits and evaluates from its checkpoint."""
    from neuromorph.cli import main
    from neuromorph.config import ConfigError, load_config
    from neuromorph.train import Trainer

    base = ["model.layers=[10]", "model.loss=xent", "model.conv_channels=[8, 16]", "model.conv_kernels=[3]",
            "model.conv_padding=[1]", "ep.T=20", "ep.K=8", "train.epochs=4", "train.batch_size=32",
            "train.lr=[0.1, 0.05, 0.02]", "train.progress=false", f"output.dir={str(tmp_path)!r}"]
    hist = Trainer(load_config(None, base)).fit(log=None)
    assert hist[-1]["test_acc"] > hist[0]["test_acc"] and hist[-1]["test_acc"] > 0.5
    assert main(["evaluate", str(tmp_path / "checkpoint.pt")]) == 0
    with pytest.raises(ConfigError, match="model.conv_kernels"):
        load_config(None, ["model.conv_channels=[8, 16]", "model.conv_kernels=[3, 3, 3]"])
    with pytest.raises(ConfigError, match="model.conv_padding"):
        load_config(None, ["model.conv_padding=[1]"])


def test_trainer_with_augmentation_and_normalisation(tmp_path):
    from neuromorph.config import load_config
    from neuromorph.train import Trainer

    cfg = load_config(None, [
        "model.layers=[10]", "model.loss=xent", "model.conv_channels=[8]", "model.conv_kernels=[3]",
        "model.conv_padding=[1]", "data.normalize=true", "data.augment=true", "data.crop_padding=1",
        "ep.T=15", "ep.K=6", "train.epochs=3", "train.batch_size=32", "train.lr=[0.05, 0.02]",
        "train.progress=false", f"output.dir={str(tmp_path)!r}"])
    hist = Trainer(cfg).fit(log=None)
    assert hist[-1]["test_acc"] > 0.3
    from neuromorph.config import ConfigError

    with pytest.raises(ConfigError, match="data.crop_padding"):
        load_config(None, ["data.crop_padding=-1"])
