"""The hot path of :class:`neuromorph.network.ConvPool` (channels-last activities, buffered unpooling, im2col
products for small unpadded convolutions) against an independent plain-torch step and against autograd of Φ.

The reference below is written from the paper (Eq. 15–20), not from :class:`ConvPool`: the forward product is
``max_pool2d(conv2d(s_pre, w) )`` with its argmax indices, the transposed product ``conv2d_input`` (the gradient of
the convolution with respect to its input) of ``max_unpool2d(s_post)``, all in NCHW.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuromorph.dynamics import relax
from neuromorph.network import ConvPool, LayeredNetwork

F64 = torch.float64
PAPER_CONV = [(128, 3, 1), (256, 3, 1), (512, 3, 1), (512, 3, 0)]  # configs/table1/xent_symmetric.toml


@pytest.fixture
def hot_f64(monkeypatch):
    """Run the hot path in float64 too (it serves float32 by default), so it is checked to 1e-12."""
    monkeypatch.setattr(ConvPool, "hot_dtypes", (torch.float32, torch.float64))


def make(conv, input_shape, dtype, seed=0, batch=3, sizes=(10,), loss="xent", **kw):
    net = LayeredNetwork(list(sizes), loss=loss, activation="half_hard_sigmoid", input_shape=input_shape, conv=conv,
                         seed=seed, dtype=dtype, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *input_shape, generator=g, dtype=F64).to(dtype)
    state = [torch.rand(batch, *s, generator=g, dtype=F64).to(dtype) for s in net.state_shapes]
    for s in state:  # a realistic activity has exact zeros and ones (the clamps), so ties in the pooling windows
        s[s < 0.2] = 0.0
        s[s > 0.9] = 1.0
    y = torch.randint(0, net.n_classes, (batch,), generator=g)
    return net, x, state, y


def ref_preactivation(net: LayeredNetwork, x, state, y, beta: float) -> list[torch.Tensor]:
    """``γ (∂Φ/∂s − β ∂ℓ/∂s) + o`` of a conv stack (+ dense layers, xent read-out) with plain torch, NCHW."""
    per, ro, _ = net._split(None)
    g, o = net.act.gain, net.act.offset
    chain = [x.reshape(x.shape[0], *net.input_shape), *[s.contiguous() for s in state]]
    n = len(state)
    grads: list = [None] * n
    switches: list = [None] * (n + 1)
    for k, syn in enumerate(net.synapses):
        w = per[k][0]
        pre = chain[k]
        if isinstance(syn, ConvPool):
            c = F.conv2d(pre, w, padding=syn.padding)
            z, idx = F.max_pool2d(c, 2, 2, return_indices=True)
            switches[k] = (idx, c.shape)
            z = z + per[k][1].view(-1, 1, 1)
        else:
            z = pre.reshape(pre.shape[0], -1) @ w.t() + per[k][1]
        grads[k] = z.reshape(state[k].shape)
    for k in range(1, n):  # feedback of synapse k into layer k - 1
        syn, w, post = net.synapses[k], per[k][0], chain[k + 1]
        if isinstance(syn, ConvPool):
            idx, cshape = switches[k]
            u = F.max_unpool2d(post, idx, 2, 2, output_size=cshape[-2:])
            fb = torch.nn.grad.conv2d_input(chain[k].shape, w, u, padding=syn.padding)
        else:
            fb = (post.reshape(post.shape[0], -1) @ w).reshape(state[k - 1].shape)
        grads[k - 1] = grads[k - 1] + fb
    if beta:
        last = state[-1].reshape(state[-1].shape[0], -1)
        yo = F.one_hot(y, net.n_classes).to(last.dtype)
        grads[-1] = grads[-1] + (beta * (yo - torch.softmax(last @ ro.t(), -1)) @ ro).view(state[-1].shape)
    return [g * d + o for d in grads]


def hot_preactivation(net, x, state, y, beta):
    with torch.no_grad():
        consts, ngb = net.constants(net.input_drive(x), y, beta)
        return net.preactivation([s.clone() for s in state], consts, ngb, inplace=True)


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_paper_convnet_step_float32_matches_plain_torch(beta):
    """The paper's ConvNet (128-256-512-512, the last layer an im2col product): one step, float32, to rounding."""
    net, x, state, y = make(PAPER_CONV, (3, 32, 32), torch.float32, batch=2)
    hot = hot_preactivation(net, x, state, y, beta)
    # the float64 reference with the float32 network's weights
    net64 = LayeredNetwork([10], loss="xent", activation="half_hard_sigmoid", input_shape=(3, 32, 32), conv=PAPER_CONV,
                           seed=0, dtype=F64)
    with torch.no_grad():
        for p64, p32 in zip(net64.param_list(), net.param_list()):
            p64.copy_(p32.double())
        ref = ref_preactivation(net64, x.double(), [s.double() for s in state], y, beta)
    assert hot[0].is_contiguous(memory_format=torch.channels_last)
    for k, (h, r) in enumerate(zip(hot, ref)):
        scale = float(r.abs().max())
        err = float((h.double() - r).abs().max())
        # float32 products of up to 4608 terms: a few 1e-7 of the largest pre-activation; a switch flipped at a
        # near-tie of a pooling window would show as an error of the size of a weight times an activity (~1e-2)
        assert err <= 2e-6 * scale, (k, err, scale)


def test_paper_convnet_pieces_float32():
    """Forward product + indices, and the transposed product with given indices, of each synapse: float32."""
    net, x, state, _ = make(PAPER_CONV, (3, 32, 32), torch.float32, batch=2)
    per = net._split(None)[0]
    chain = [x, *state]
    for k, syn in enumerate(net.synapses[:4]):
        w = per[k][0]
        pre = chain[k]
        with torch.no_grad():
            z, (idx, cshape) = syn._pool(pre, w)
            c = F.conv2d(pre.double(), w.double(), padding=syn.padding)
            z_ref, idx_ref = F.max_pool2d(c, 2, 2, return_indices=True)
            assert tuple(cshape) == tuple(c.shape)
            torch.testing.assert_close(z.double(), z_ref, rtol=0, atol=2e-6 * float(z_ref.abs().max()))
            # the indices agree wherever the window's maximum is not a near-tie
            top2 = c.unfold(2, 2, 2).unfold(3, 2, 2).reshape(*z_ref.shape, 4).topk(2, -1).values
            clear = (top2[..., 0] - top2[..., 1]) > 1e-4 * float(z_ref.abs().max())
            assert clear.float().mean() > 0.9
            assert torch.equal(idx[clear], idx_ref[clear])
            if k == 0:
                continue
            post = chain[k + 1]
            acc = torch.rand(pre.shape, dtype=torch.float32)
            out = syn.add_transposed([w], (idx_ref, cshape), acc.clone(), post, 0.5, True)
            u = F.max_unpool2d(post.double(), idx_ref, 2, 2, output_size=cshape[-2:])
            fb = torch.nn.grad.conv2d_input(pre.shape, w.double(), u, padding=syn.padding)
            ref = acc.double() + 0.5 * fb
            torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6 * float(ref.abs().max()))
            out2 = syn.add_transposed([w], (idx_ref, cshape), acc, post, 0.5, False)
            assert out2 is not acc and torch.equal(out2, out)


SMALL = [
    ([(4, 3, 1), (6, 3, 0)], (3, 12, 12)),  # 12x12 -> pool 6x6 -> 4x4 conv (im2col) -> pool 2x2
    ([(4, 3, 1), (6, 3, 0)], (2, 11, 11)),  # odd sizes: 11 -> pool 5, 5 -> 3x3 (im2col) -> pool 1
    ([(4, 3, 1), (6, 3, 1), (5, 2, 0)], (2, 14, 14)),  # 14 -> 7, 7 -> 7 -> 3 (padded, odd), 3 -> 2x2 (kernel 2) -> 1
]


@pytest.mark.parametrize("conv,input_shape", SMALL)
@pytest.mark.parametrize("loss,sizes", [("xent", (10,)), ("mse", (7, 5))])
def test_hot_step_float64_matches_plain_torch_and_autograd(hot_f64, conv, input_shape, loss, sizes):
    """Float64, hot path forced: one step equals the plain-torch step and autograd of Φ − βℓ to 1e-12."""
    net, x, state, y = make(conv, input_shape, F64, sizes=sizes, loss=loss)
    for beta in (0.0, 0.4):
        hot = hot_preactivation(net, x, state, y, beta)
        assert any(h.is_contiguous(memory_format=torch.channels_last) and h.dim() == 4 and h.shape[-1] > 1
                   for h in hot)  # the hot path ran
        if loss == "xent":
            for h, r in zip(hot, ref_preactivation(net, x, state, y, beta)):
                torch.testing.assert_close(h, r, rtol=0, atol=1e-12)
        leaves = [s.clone().requires_grad_(True) for s in state]
        energy = net.phi(x, leaves) - beta * net.loss(leaves, y)
        grads = torch.autograd.grad(energy.sum(), leaves)
        g, o = net.act.gain, net.act.offset
        for h, d in zip(hot, grads):
            torch.testing.assert_close(h, g * d + o, rtol=0, atol=1e-12)


@pytest.mark.parametrize("conv,input_shape", SMALL)
def test_hot_relaxation_float64_matches_plain_path(monkeypatch, conv, input_shape):
    """Whole relaxations (free and batched ±β) on the hot path equal those on the plain path (float64)."""
    net, x, _, y = make(conv, input_shape, F64, batch=4)

    def run():
        with torch.no_grad():
            d = net.input_drive(x)
            free = relax(net, d, net.zero_state(4), 12)
            beta = torch.tensor([[0.5]] * 4 + [[-0.5]] * 4, dtype=F64)
            nudged = relax(net, d.repeat(2, 1, 1, 1), [s.repeat(2, *([1] * (s.dim() - 1))) for s in free.state], 5,
                           y=y.repeat(2), beta=beta)
        return free.state + nudged.state

    monkeypatch.setattr(ConvPool, "hot_dtypes", ())
    plain = run()
    monkeypatch.setattr(ConvPool, "hot_dtypes", (F64,))
    hot = run()
    for a, b in zip(plain, hot):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_unidirectional_hot_path_float64(hot_f64):
    """With separate backward weights the transposed product unpools with the switches of ``w^b ⋆ s``."""
    conv, input_shape = SMALL[2]
    net, x, state, y = make(conv, input_shape, F64, unidirectional=True)
    hot = hot_preactivation(net, x, state, y, 0.3)
    per, ro, back = net._split(None)
    # reference: forward products with w^f, feedback with w^b unpooled at the argmax of w^b ⋆ s^{k-1}
    chain = [x, *state]
    g, o = net.act.gain, net.act.offset
    ref = []
    for k, syn in enumerate(net.synapses):
        c = F.conv2d(chain[k], per[k][0], padding=syn.padding)
        ref.append(F.max_pool2d(c, 2, 2) + per[k][1].view(-1, 1, 1))
    for k in range(1, len(state)):
        syn, wb = net.synapses[k], back[k]
        cb = F.conv2d(chain[k], wb, padding=syn.padding)
        _, idx = F.max_pool2d(cb, 2, 2, return_indices=True)
        u = F.max_unpool2d(chain[k + 1], idx, 2, 2, output_size=cb.shape[-2:])
        ref[k - 1] = ref[k - 1] + torch.nn.grad.conv2d_input(chain[k].shape, wb, u, padding=syn.padding)
    last = state[-1].reshape(state[-1].shape[0], -1)
    yo = F.one_hot(y, net.n_classes).to(F64)
    ref[-1] = ref[-1] + (0.3 * (yo - torch.softmax(last @ ro.t(), -1)) @ ro).view(state[-1].shape)
    for h, r in zip(hot, ref):
        torch.testing.assert_close(h, g * r + o, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_in_place_weight_updates_are_seen(fused):
    """A weight updated in place between relaxations (an optimizer step; a fused one moves no version counter)
    is the weight the next products use, on the convolution and on the im2col path."""
    net, x, state, y = make(SMALL[0][0], SMALL[0][1], torch.float32)
    opt = torch.optim.SGD(net.param_list(), lr=0.5, momentum=0.9, fused=fused)
    before = hot_preactivation(net, x, state, y, 0.0)
    for p in net.param_list():
        p.grad = torch.ones_like(p)
    opt.step()
    after = hot_preactivation(net, x, state, y, 0.0)
    with torch.no_grad():
        ref = ref_preactivation(net, x, state, y, 0.0)
    for a, b, r in zip(before, after, ref):
        assert not torch.allclose(a, b)
        torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-5)


def test_unpool_and_weight_gradient_layouts():
    """Channels-last switches unpool an NCHW post; the weight gradient has the parameter's layout (a fused
    optimizer reads the gradient's memory as if it had the parameter's strides)."""
    syn = ConvPool(4, 6, 3, padding=1)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, 3, 3, generator=g)
    pre = torch.rand(3, 4, 8, 8, generator=g)
    post = torch.rand(3, 6, 4, 4, generator=g)
    with torch.no_grad():
        _, aux = syn._pool(pre, w)
        c = F.conv2d(pre, w, padding=1)
        _, idx = F.max_pool2d(c, 2, 2, return_indices=True)
        assert torch.equal(aux[0], idx)
        assert torch.equal(syn.unpool(post, aux), F.max_unpool2d(post, idx, 2, 2, output_size=(8, 8)))
        gw = syn.phi_grads(post, pre, None, 1, 3, [w, torch.zeros(6)])[0]
    assert gw.is_contiguous()
    ref = torch.nn.grad.conv2d_weight(pre, w.shape, F.max_unpool2d(post, idx, 2, 2, output_size=(8, 8)), padding=1)
    torch.testing.assert_close(gw, ref / 3, rtol=1e-5, atol=1e-6)
