"""Convolutions and dropout on the hardware substrate: conv arrays (im2col rows, pooling in the periphery, transposed
reads, the weight-shared update) against the ideal reference, in float64 with a perfect device and periphery."""

import dataclasses
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from test_hardware import track_the_reference

from neuromorph.config import load_config
from neuromorph.crossbar import CrossbarLayer, Periphery
from neuromorph.devices import load_card
from neuromorph.dynamics import relax
from neuromorph.estimators import OneSided, Symmetric, _rows, estimate_from_states
from neuromorph.hardware import HardwareNetwork, _ConvReads
from neuromorph.network import LayeredNetwork

F64 = torch.float64
CASES = [("ep", ()), ("kp_vf", ()), ("ep", (0.2, 0.1, 0.3))]  # rule, dropout per state layer


def make(uni=False, dropout=(), loss="xent", card="ideal", periphery=None, batch=4):
    kw = dict(loss=loss, input_shape=(2, 8, 8), conv=[(3, 3, 1), (4, 3, 1)], dtype=F64, seed=0, init_scale=0.9,
              unidirectional=uni, dropout=dropout)
    sizes = [6, 5] if loss == "xent" else [5]
    net, ref = LayeredNetwork(sizes, **kw), LayeredNetwork(sizes, **kw)
    hw = HardwareNetwork(net, card, periphery if periphery is not None else Periphery.ideal(),
                         generator=torch.Generator().manual_seed(5))
    ref.load_state_dict(net.state_dict())  # the programmed weights
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 2 * 64, generator=g, dtype=F64)
    y = torch.randint(0, 5, (batch,), generator=g)
    return hw, ref, x, y


def rep(t, J):
    return t.repeat(J, *([1] * (t.dim() - 1)))


def phases(hw, ref, x, y, est, masks):
    B = x.shape[0]
    free_ref = relax(ref, ref.input_drive(x), ref.zero_state(B), 25, masks=masks)
    free = hw.settle_phase(x, None, 25, masks=masks)
    plan = est.plan()
    J = len(plan.betas)
    beta = _rows(plan.betas, B, x)
    mJ = None if masks is None else [None if m is None else rep(m, J) for m in masks]
    nud_ref = relax(ref, ref.input_drive(rep(x, J)), [rep(s, J) for s in free_ref.state], 10, y=y.repeat(J),
                    beta=beta, masks=mJ)
    nud = hw.settle_phase(rep(x, J), [rep(u, J) for u in free.u], 10, y=y.repeat(J), beta=beta, masks=mJ)
    return free, free_ref, nud, nud_ref, plan, mJ


def max_diff(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


@pytest.mark.parametrize("rule,dropout", CASES)
@pytest.mark.parametrize("est", [Symmetric(0.4), OneSided(0.4)], ids=["symmetric", "one_sided"])
def test_conv_phases_and_update_rows_equal_the_reference(rule, dropout, est):
    """Perfect device and periphery: each phase's steady state equals the reference's to 1e-12, and the rows
    programmed into every array (conv arrays: patches and unpooled posts over every position) give the reference's
    estimate to 1e-12: conv + pool + dense + read-out, the unidirectional net with KP-VF, dropout masks."""
    hw, ref, x, y = make(uni=rule == "kp_vf", dropout=dropout)
    masks = ref.sample_dropout_masks(x.shape[0], torch.Generator().manual_seed(3))
    assert (masks is not None) == bool(dropout)
    free, free_ref, nud, nud_ref, plan, mJ = phases(hw, ref, x, y, est, masks)
    assert max_diff(free.state, free_ref.state) < 1e-12
    assert max_diff(nud.state, nud_ref.state) < 1e-12
    assert max(float(s.std()) for s in free.state) > 0.05  # the states are not all at a rail: a real test
    fs, ns = ref.masked(free.state, masks), ref.masked(nud.state, mJ)
    rows = hw.outer_products(x, y, fs, ns, plan, rule)
    est_rows = {name: post.t() @ pre / x.shape[0] for name, (pre, post) in rows.items()}
    grads = estimate_from_states(ref, x, y, fs, ns, plan, x.shape[0], rule)  # −∇̂ in param_list order
    per, ro, back = ref._split(None)
    index = {id(p): i for i, p in enumerate(ref.param_list())}
    for k in range(len(per)):
        w = est_rows[f"w{k + 1}"]
        g = -grads[index[id(per[k][0])]].detach()
        torch.testing.assert_close(w[:, :-1], g.reshape(w.shape[0], -1), rtol=0, atol=1e-12)
        torch.testing.assert_close(w[:, -1], -grads[index[id(per[k][1])]].detach(), rtol=0, atol=1e-12)
        if back[k] is not None:
            gb = -grads[index[id(back[k])]].detach()
            torch.testing.assert_close(est_rows[f"w{k + 1}_back"], gb.reshape(gb.shape[0], -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(est_rows["w_out"], -grads[index[id(ro)]].detach(), rtol=0, atol=1e-12)
    assert float(grads[0].abs().max()) > 1e-3


def test_conv_array_reads_are_conv2d_and_its_transpose():
    """A conv array's forward read over the patches is ``conv2d`` of ``W = (G+ − G−)/g0`` (bias line included)
    and its transposed read, summed back onto the inputs, is ``conv_transpose2d`` (exact periphery)."""
    hw, ref, x, y = make(card="taox_hfox")
    syn = hw.net.synapses[1]
    reads = _ConvReads(syn, hw._in_shape(1), hw, 1, 1.0, 0.0)
    w = hw.net._split(None)[0][1]
    g = torch.Generator().manual_seed(7)
    pre = torch.rand(3, *hw._in_shape(1), generator=g, dtype=F64)
    rows = reads.fwd_rows(reads.patches(pre.reshape(3, -1)))
    conv = torch.nn.functional.conv2d(pre, w[0], w[1], padding=syn.padding)
    torch.testing.assert_close(rows.view(3, -1, conv.shape[1]).transpose(1, 2).reshape(conv.shape), conv,
                               rtol=0, atol=1e-12)
    z = reads.forward(pre.reshape(3, -1))
    torch.testing.assert_close(z.view(3, *syn.out_shape(hw._in_shape(1))),
                               torch.nn.functional.max_pool2d(conv, 2), rtol=0, atol=1e-12)
    post = torch.rand(z.shape, generator=g, dtype=F64)
    unpooled = syn.unpool(post.view(3, *syn.out_shape(hw._in_shape(1))), syn._pool(pre, w[0])[1])
    fb = reads.feedback(post)
    ref_fb = torch.nn.functional.conv_transpose2d(unpooled, w[0], padding=syn.padding)
    torch.testing.assert_close(fb.view(ref_fb.shape), ref_fb, rtol=0, atol=1e-12)


def test_conv_reads_have_the_card_read_noise_at_every_position():
    """With read noise, every output position is its own read of the conv array: over reads, the output at every
    position has the exact product as its mean and the spread of a dense read of the same patch, and the
    positions of one read are independent draws (uncorrelated)."""
    card = dataclasses.replace(load_card("taox_hfox"), read_noise_std=0.02)
    hw, ref, x, y = make(card=card, periphery=Periphery(read_noise=True))
    syn = hw.net.synapses[0]
    reads = _ConvReads(syn, hw._in_shape(0), hw, 0, 1.0, 0.0)
    pre = torch.full((1, *hw._in_shape(0)), 0.5, dtype=F64)
    patches = reads.patches(pre.reshape(1, -1))
    inner = patches[(patches == 0.5).all(1)]  # positions whose patch lies inside the image: all the same input
    assert inner.shape[0] >= 30
    out = torch.stack([reads.fwd_rows(inner) for _ in range(400)])  # (reads, positions, c_out)
    arr = hw.forward_arrays[0]
    dense = torch.stack([arr.forward(inner[:1], bias_line=True)[0] for _ in range(400)])
    exact = arr.weights() @ torch.cat([inner[0], torch.ones(1, dtype=F64)])
    sd = dense.std(0)
    assert float(sd.min()) > 1e-3
    assert float(((out[:, 0].mean(0) - exact).abs() / (sd / 20)).max()) < 4
    torch.testing.assert_close(out[:, 0].std(0), sd, rtol=0.2, atol=0)
    torch.testing.assert_close(out.reshape(-1, out.shape[-1]).std(0), sd, rtol=0.1, atol=0)
    a, b = out[:, 0, 0] - out[:, 0, 0].mean(), out[:, 1, 0] - out[:, 1, 0].mean()
    assert abs(float((a * b).mean() / (a.std() * b.std()))) < 0.2  # independent draws per position
    assert arr.per_row_noise() and CrossbarLayer(2, 2, card, Periphery(read_noise=True, r_row=1.0),
                                                    generator=torch.Generator()).per_row_noise()
    assert not CrossbarLayer(2, 2, card, Periphery(read_noise=False), generator=torch.Generator()).per_row_noise()


@pytest.mark.parametrize("extra", [[], ["model.dropout=[0.1, 0.1]"], ["model.unidirectional=true", "ep.rule=kp_vf"]],
                         ids=["conv", "dropout", "kp_vf"])
def test_conv_hil_with_a_perfect_device_tracks_the_reference(tmp_path, extra):
    """One epoch of hardware-in-the-loop training of a ConvNet on a perfect device (deterministic pulses, ideal
    periphery, plain SGD) ends on the reference's weights within 10 pulse quanta."""
    track_the_reference(tmp_path, ["model.layers=[10]", "model.loss=xent", "model.conv_channels=[4, 8]",
                                   "model.conv_kernels=[3]", "model.conv_padding=[1]", "train.lr=[0.1, 0.05, 0.02]",
                                   *extra])


def test_weight_shared_update_on_a_finite_state_device_realises_the_request(tmp_path):
    """A 100-level device with write noise: the conv array's weight-shared request (the EP rule summed over every
    position) is realised by stochastic rounding with the right mean (within 4 standard errors per weight)."""
    path = tmp_path / "coarse.toml"
    path.write_text('[device]\nname = "coarse"\nmodel = "ideal"\n\n[parameters]\n'
                    'g_max = { value = 10, unit = "uS" }\ng_min = { value = 0, unit = "uS" }\n'
                    'dw_min = { value = 1, unit = "%range" }\nc2c_sigma = { value = 0.2, unit = "%range" }\n')
    card = load_card(path)
    hw, ref, x, y = make(card=card, batch=8)
    free, free_ref, nud, nud_ref, plan, _ = phases(hw, ref, x, y, Symmetric(0.5), None)
    rows = hw.outer_products(x, y, free.state, nud.state, plan, "ep")
    name = "w2"
    arr = hw.arrays()[name]
    dw = arr.array.dw
    pre, post = rows[name]
    lr = 40 * dw / float((post.t() @ pre / 8).abs().max())  # the largest request: 40 pulses
    request = (lr * post.t() @ pre / 8) / dw
    reps = 200
    total = torch.zeros_like(request)
    w0 = arr.weights().clone()
    for _ in range(reps):
        arr.set_weights(w0, count=False)
        before = arr.weights()
        hw.apply_update({k: (r if k == name else (r[0], torch.zeros_like(r[1]))) for k, r in rows.items()}, 8,
                        [lr], mode="stochastic_rounding")
        total += (arr.weights() - before) / dw
    mean = total / reps
    p = request.abs() - request.abs().floor()
    sd = torch.sqrt(p * (1 - p) + (0.002 * card.g_range / arr.g0 / dw) ** 2 * request.abs().ceil())
    z = ((mean - request).abs() / (sd.clamp_min(1e-3) / math.sqrt(reps)))
    assert float(request.abs().max()) == pytest.approx(40) and float(mean.abs().max()) > 30
    assert float(z.max()) < 4.5, float(z.max())


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}


@pytest.mark.parametrize("path", [p for p in CONFIGS if "sweeps" not in p.parts], ids=lambda p: p.stem)
def test_every_network_config_maps_onto_crossbars(path):
    """Every shipped network config loads, and its network (dense or conv, dropout, unidirectional) maps onto
    arrays of a real card (the ConvNet recipes included): ``neuromorph compare`` accepts it."""
    from neuromorph.train import build_network

    cfg = load_config(path)
    shape = SHAPES[cfg.data.name]
    net = build_network(cfg, math.prod(shape), 10, shape)
    hw = HardwareNetwork(net, "reram_es")
    assert len(hw.forward_arrays) == len(net.synapses)
    for syn, arr in zip(net.synapses, hw.forward_arrays):
        n_in = syn.c_in * syn.kernel**2 if hasattr(syn, "kernel") else syn.n_pre
        assert arr.array.shape == (syn.c_out if hasattr(syn, "kernel") else syn.n_post, n_in + syn.bias)


@pytest.mark.parametrize("case", ["plain", "drift", "ir_drop"])
@pytest.mark.parametrize("forward", [True, False])
def test_per_row_read_noise_matches_a_conductance_draw_per_row(forward, case):
    """``per_row=True`` draws each row's read noise as the Gaussian partial current of its tile (before the tile's
    ADC): over many reads its mean and spread per output equal those of reads that draw the conductances once per
    call (tiled array, 8-bit ADC), and the rows of one call differ. Also with drift (the noise around the drifted
    conductances, exact) and with IR drop (first order: the noise current added to the IR-dropped read; here the
    drop is a few %, so the spreads agree to the test's resolution)."""
    card = dataclasses.replace(load_card("taox_hfox"), read_noise_std=0.03,
                               **({"drift_nu": 0.05, "drift_nu_std": 0.01} if case == "drift" else {}))
    per = Periphery(read_noise=True, adc_bits=8, adc_range=8.0, **({"r_row": 200.0, "r_col": 200.0}
                                                                    if case == "ir_drop" else {}))
    arr = CrossbarLayer(6, 10, card, per, tile_size=(4, 4), generator=torch.Generator().manual_seed(0), dtype=F64)
    arr.set_weights(torch.rand(6, 10, generator=torch.Generator().manual_seed(1), dtype=F64) - 0.5, count=False)
    u = torch.rand(1, 10 if forward else 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = 1e4 if case == "drift" else None
    read = partial(arr.forward if forward else arr.transpose, t=t)
    n = 3000 if case != "ir_drop" else 2000
    rows = read(u.repeat(n, 1), per_row=True)
    calls = torch.cat([read(u) for _ in range(n)])
    assert not torch.equal(rows[0], rows[1])
    se = calls.std(0) / math.sqrt(n)
    assert float(((rows.mean(0) - calls.mean(0)).abs() / (se * math.sqrt(2))).max()) < 4.5
    torch.testing.assert_close(rows.std(0), calls.std(0), rtol=0.08, atol=0)
    if case != "plain":  # the effect is there: the mean read moved away from the programmed weights' product
        exact = u @ (arr.weights().T if forward else arr.weights())
        assert float((calls.mean(0) - exact).abs().max()) > 6 * float(se.max())


@pytest.mark.parametrize("uni", [False, True], ids=["bidirectional", "unidirectional"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_conv_reads_equal_the_per_position_reads(monkeypatch, uni, dtype):
    """Exact conv arrays (ideal periphery, no noise) are read with the ideal store's convolution kernels on the
    programmed weights instead of one product per position (im2col/col2im): the same phases (1e-12 in float64,
    float32 rounding otherwise) and the same read counters as the per-position reads."""
    def run(fast):
        hw, _, x, y = make(uni=uni)
        hw.net.to(dtype)
        hw = HardwareNetwork(hw.net, "ideal", Periphery.ideal(), generator=torch.Generator().manual_seed(5))
        x = x.to(dtype)
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(CrossbarLayer, "exact_reader", lambda *a, **k: None)
            free = hw.settle_phase(x, None, 12)
            beta = _rows((0.5, -0.5), x.shape[0], x)
            nud = hw.settle_phase(rep(x, 2), [rep(u, 2) for u in free.u], 7, y=y.repeat(2), beta=beta)
        counters = {n: {k: v for k, v in a.stats().items() if k.endswith(("_calls", "_samples")) or k == "reads"}
                    for n, a in hw.arrays().items()}
        return free.state + nud.state, counters

    (fast, c_fast), (slow, c_slow) = run(True), run(False)
    assert max_diff(fast, slow) < (1e-12 if dtype == torch.float64 else 1e-5)
    assert c_fast == c_slow
    assert c_fast["w1"]["forward_samples"] == 4 * 64 + 8 * 64 and c_fast["w1"]["reads"] > 0
