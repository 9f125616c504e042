"""Crossbar substrate: differential pairs, tiles with periphery, IR drop, programming, counters (issue 4, items 3-5).

Parametrised over every preset card in ``device_models/``. References are independent of the implementation:
float products, hand-written converter arithmetic, a modified-nodal-analysis solve of the tile grid built here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve

devices = pytest.importorskip("neuromorph.devices")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from neuromorph.crossbar import (  # noqa: E402
    CrossbarLayer,
    DifferentialArray,
    NodalSolver,
    Periphery,
    PulseTrainParams,
    converter_lsb,
    quantise,
    solve_iterative,
)
from neuromorph.crossbar.irdrop import currents_from_nodes  # noqa: E402
from neuromorph.crossbar.pairs import pulse_train_scales  # noqa: E402

load_card, list_presets, pulse_response = devices.load_card, devices.list_presets, devices.pulse_response
STEP_MODELS = devices.cards.STEP_MODELS

F64 = torch.float64
PRESETS = list_presets()
TILES = [(10, 7), (3, 4), (4, 3), (1, 1), (16, 16), (7, 2)]


def test_presets_found():
    assert len(PRESETS) >= 10 and "ideal" in PRESETS


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(card):
    """The card without read noise / drift / stuck devices (d2d and c2c variability kept)."""
    return replace(card, read_noise_std=0.0, drift_nu=0.0, drift_nu_std=0.0, stuck_at_min_frac=0.0,
                   stuck_at_max_frac=0.0)


def linearised(card):
    """A finite-state device with the preset's levels / step, d2d and c2c noise, but a state-independent, symmetric
    step (NeuroSim: NL = 0, LTD levels = LTP levels; step models: constant step, no up/down bias)."""
    c = quiet(card)
    if c.model == "neurosim":
        return replace(c, nl_ltp=0.0, nl_ltd=0.0, nl_dtod=0.0, max_pulses_ltd=c.max_pulses)
    if c.model in STEP_MODELS:
        return replace(c, model="constant_step", up_down=0.0, up_down_dtod=0.0, gamma_up=0.0, gamma_down=0.0,
                       gamma_up_dtod=0.0, gamma_down_dtod=0.0, dw_min_std_add=0.0, dw_min_std_slope=0.0)
    return c


def rand_w(shape, seed=0, scale=0.8):
    return (2 * torch.rand(shape, generator=gen(seed), dtype=F64) - 1) * scale


def layer(card, out_f=7, in_f=10, periphery=None, tile=(4, 3), seed=0, **kw) -> CrossbarLayer:
    return CrossbarLayer(out_f, in_f, card, periphery or Periphery.ideal(), tile, generator=gen(seed), dtype=F64,
                         **kw)


# --------------------------------------------------------------------------------------------- perfect reads
# an ADC that never clips: numerically ideal, but the reads go through the per-tile partial sums (no exact read)
WIDE_ADC = Periphery.ideal(adc_range=1e6)


@pytest.mark.parametrize("path", ["exact", "tiles"])
@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("preset", PRESETS)
def test_perfect_reads_equal_float_products(preset, tile, path):
    card = quiet(load_card(preset))
    L = layer(card, tile=tile, periphery=WIDE_ADC if path == "tiles" else None)
    L.set_weights(rand_w((7, 10)))
    W = L.weights()
    x = torch.randn(5, 10, generator=gen(1), dtype=F64)
    y = torch.randn(5, 7, generator=gen(2), dtype=F64)
    assert torch.allclose(L.forward(x), x @ W.T, rtol=0, atol=1e-12)
    assert torch.allclose(L.transpose(y), y @ W, rtol=0, atol=1e-12)
    # unbatched inputs, and the adjoint identity <y, W x> = <Wᵀ y, x> of the same conductances
    assert torch.allclose(L.forward(x[0]), W @ x[0], rtol=0, atol=1e-12)
    assert abs(float((y * L.forward(x)).sum() - (L.transpose(y) * x).sum())) < 1e-11


@pytest.mark.parametrize("preset", ["ideal", "taox_hfox", "reram_es"])
def test_exact_reads_and_bias_line_match_the_tiled_reads_and_follow_programming(preset):
    """The exact read (ideal periphery, noise-free read: ``W x`` with ``W`` cached per programmed state) equals
    the per-tile read of the same devices; a bias line held at 1 equals the concatenated input; after programming
    the cache follows the new conductances; reads are counted the same on both paths."""
    card = quiet(load_card(preset))
    exact, tiled = (layer(card, tile=(4, 3), periphery=p) for p in (None, WIDE_ADC))
    for L in (exact, tiled):
        L.set_weights(rand_w((7, 10)))
    x = torch.rand(5, 9, generator=gen(1), dtype=F64)
    y = torch.randn(5, 7, generator=gen(2), dtype=F64)
    x1 = torch.cat([x, torch.ones(5, 1, dtype=F64)], 1)
    for step in range(2):
        W = exact.weights()
        assert torch.equal(W, tiled.weights())
        for L in (exact, tiled):
            assert torch.allclose(L.forward(x, bias_line=True), x1 @ W.T, rtol=0, atol=1e-13)
            assert torch.allclose(L.forward(x1), x1 @ W.T, rtol=0, atol=1e-13)
            assert torch.allclose(L.transpose(y, bias_line=True), (y @ W)[:, :-1], rtol=0, atol=1e-13)
        w_main, w_last = exact.weight_parts()
        assert torch.equal(w_main, W[:, :-1]) and torch.equal(w_last, W[:, -1])
        exact.weights().add_(1.0)  # weights() is a copy: the cache is untouched
        assert torch.equal(exact.weights(), W)
        dw = 0.1 * rand_w((7, 10), seed=5 + step)
        for L in (exact, tiled):
            L.program(dw, mode="deterministic")
        assert not torch.equal(exact.weights(), W)  # programmed: the next reads see the new state
    assert exact.stats()["reads"] == tiled.stats()["reads"] > 0
    # a noisy read is not exact: fresh noise every read, not the cached product
    noisy = layer(replace(card, read_noise_std=0.01), tile=(4, 3), periphery=Periphery.ideal(read_noise=True))
    noisy.set_weights(rand_w((7, 10)))
    a, b = noisy.forward(x, bias_line=True), noisy.forward(x, bias_line=True)
    assert not torch.equal(a, b) and torch.allclose(a, x1 @ noisy.weights().T, atol=0.5)


@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_perfect_ideal_device_holds_the_requested_weights(tile):
    L = layer(load_card("ideal"), tile=tile, weights=rand_w((7, 10)))
    W = rand_w((7, 10))
    assert L.array.representable_fraction(W) == 1.0
    L.set_weights(W)
    x = torch.randn(3, 10, generator=gen(4), dtype=F64)
    assert torch.allclose(L.weights(), W, rtol=0, atol=1e-12)
    assert torch.allclose(L.forward(x), x @ W.T, rtol=0, atol=1e-12)
    assert torch.allclose(L.transpose(x[:, :7]), x[:, :7] @ W, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- mapping
def _safe_range(A: DifferentialArray) -> float:
    """Largest |W| every pair can hold, from the per-device bounds (computed independently of the mapping code)."""
    pmin, pmax, nmin, nmax = A.pos.g_min, A.pos.g_max, A.neg.g_min, A.neg.g_max
    if A.mapping == "min":
        floor = torch.maximum(pmin, nmin)
        return float(torch.minimum(pmax - floor, nmax - floor).min()) / A.g0
    c = 0.25 * (pmin + pmax + nmin + nmax)
    room = torch.stack([c - pmin, pmax - c, c - nmin, nmax - c]).amin(0)
    return 2 * float(room.min()) / A.g0


@pytest.mark.parametrize("mapping", ["min", "symmetric"])
@pytest.mark.parametrize("preset", PRESETS)
@settings(max_examples=20, deadline=None)
@given(w=arrays(np.float64, (4, 5), elements=st.floats(-1.6, 1.6, allow_nan=False, width=64)))
def test_weights_conductances_round_trip(preset, mapping, w):
    A = DifferentialArray(load_card(preset), (4, 5), generator=gen(3), mapping=mapping, dtype=F64)
    W = torch.from_numpy(w)
    gp, gn, ok = A.weights_to_conductances(W, return_mask=True)
    assert (gp >= A.pos.g_min - 1e-20).all() and (gp <= A.pos.g_max + 1e-20).all()
    assert (gn >= A.neg.g_min - 1e-20).all() and (gn <= A.neg.g_max + 1e-20).all()
    back = A.conductances_to_weights(gp, gn)
    assert torch.allclose(back[ok], W[ok], rtol=0, atol=1e-12)
    # clipped weights keep their sign and shrink
    assert (back[~ok].abs() <= W[~ok].abs() + 1e-12).all()
    assert (back[~ok] * W[~ok] >= 0).all()
    safe = _safe_range(A)
    assert ok[W.abs() <= safe - 1e-9].all()
    assert A.representable_fraction(W) == pytest.approx(float(ok.double().mean()))


def test_mapping_conventions_and_representable_fraction():
    card = load_card("ideal")
    A = DifferentialArray(card, (1, 3), generator=gen(), dtype=F64)
    assert A.g0 == pytest.approx(card.g_max - card.g_min)
    gp, gn = A.weights_to_conductances(torch.tensor([[0.5, -0.25, 0.0]], dtype=F64))
    assert torch.allclose(gp, torch.tensor([[card.g_min + 0.5 * A.g0, card.g_min, card.g_min]], dtype=F64))
    assert torch.allclose(gn, torch.tensor([[card.g_min, card.g_min + 0.25 * A.g0, card.g_min]], dtype=F64))
    S = DifferentialArray(card, (1, 2), generator=gen(), mapping="symmetric", dtype=F64)
    mid = 0.5 * (card.g_min + card.g_max)
    gp, gn = S.weights_to_conductances(torch.tensor([[0.5, -0.5]], dtype=F64))
    assert torch.allclose(gp, torch.tensor([[mid + 0.25 * S.g0, mid - 0.25 * S.g0]], dtype=F64))
    assert torch.allclose(S.weights(), torch.zeros(1, 2, dtype=F64), atol=1e-12)  # starts at W = 0
    W = torch.tensor([[0.5, 1.5, -2.0, 0.99]], dtype=F64)
    B = DifferentialArray(card, (1, 4), generator=gen(), dtype=F64)
    assert B.set_weights(W) == 0.5
    assert B.stats()["representable_fraction"] == 0.5
    assert torch.allclose(B.weights(), torch.tensor([[0.5, 1.0, -1.0, 0.99]], dtype=F64), atol=1e-12)
    G = DifferentialArray(card, (1, 4), generator=gen(), g0=2 * card.g_range, dtype=F64)
    assert G.representable_fraction(torch.tensor([[0.5, -0.5, 0.2, 0.6]], dtype=F64)) == 0.75


# --------------------------------------------------------------------------------------------- converters
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_dac_quantisation_half_lsb_and_clipping(bits, signed):
    p = Periphery(dac_bits=bits, v_read=0.3, x_max=2.0, dac_signed=signed)
    lsb = 0.3 / (2 ** (bits - 1) - 1) if signed else 0.3 / (2**bits - 1)
    assert p.dac_lsb() == pytest.approx(lsb)
    lo = -2.0 if signed else 0.0
    x = torch.linspace(lo, 2.0, 2001, dtype=F64)
    v = p.dac(x)
    assert (v - x * 0.15).abs().max() <= lsb / 2 + 1e-15
    codes = v / lsb
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    big = torch.tensor([-50.0, -2.5, 2.5, 50.0], dtype=F64)
    assert torch.allclose(p.dac(big), torch.tensor([lo * 0.15, lo * 0.15, 0.3, 0.3], dtype=F64))


@pytest.mark.parametrize("preset", ["ideal", "taox_hfox", "reram_sb"])
def test_dac_error_propagates_within_bound(preset):
    p = Periphery.ideal(dac_bits=4, x_max=1.0)
    L = layer(quiet(load_card(preset)), periphery=p, tile=(3, 4))
    L.set_weights(rand_w((7, 10)))
    W = L.weights()
    x = 2 * torch.rand(6, 10, generator=gen(5), dtype=F64) - 1
    lsb_x = p.dac_lsb() / p.volts_per_input
    bound = W.abs().sum(1) * lsb_x / 2
    err = (L.forward(x) - x @ W.T).abs()
    assert (err <= bound + 1e-12).all() and err.max() > 0


@pytest.mark.parametrize("tile", [(10, 7), (3, 4), (4, 2)], ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("unit", ["w", "A"])
def test_adc_quantisation_per_tile_half_lsb_and_clipping(tile, unit):
    card = quiet(load_card("taox_hfox"))
    probe = layer(card, tile=tile)
    scale = probe.amps_per_weight_unit
    fs_w = 1.5
    p = Periphery.ideal(adc_bits=6, adc_range=fs_w if unit == "w" else fs_w * scale, adc_unit=unit)
    L = layer(card, periphery=p, tile=tile)
    L.set_weights(rand_w((7, 10), scale=0.6))
    W = L.weights()
    lsb_w = converter_lsb(6, fs_w)
    x = torch.rand(8, 10, generator=gen(6), dtype=F64) * 0.8
    y = L.forward(x)
    # reference: partial sums of the tiles along the inputs, each clipped + rounded to the LSB, added digitally
    ref = torch.zeros(8, 7, dtype=F64)
    ref_ideal = torch.zeros(8, 7, dtype=F64)
    n_tiles = math.ceil(10 / tile[0])
    for a in range(n_tiles):
        js = slice(a * tile[0], min((a + 1) * tile[0], 10))
        part = x[:, js] @ W[:, js].T
        ref += torch.round(part.clamp(-fs_w, fs_w) / lsb_w) * lsb_w
        ref_ideal += part.clamp(-fs_w, fs_w)
    assert torch.allclose(y, ref, rtol=0, atol=1e-9 * lsb_w)
    assert ((y - ref_ideal).abs() <= n_tiles * lsb_w / 2 + 1e-12).all()
    if n_tiles == 1:
        assert ((y - x @ W.T).abs() <= lsb_w / 2 + 1e-12).all() or (x @ W.T).abs().max() > fs_w
    # transpose: partial sums over output tiles
    yy = torch.rand(4, 7, generator=gen(7), dtype=F64)
    xt = L.transpose(yy)
    ref_t = torch.zeros(4, 10, dtype=F64)
    for b in range(math.ceil(7 / tile[1])):
        is_ = slice(b * tile[1], min((b + 1) * tile[1], 7))
        ref_t += quantise(yy[:, is_] @ W[is_, :], 6, fs_w)
    assert torch.allclose(xt, ref_t, rtol=0, atol=1e-9 * lsb_w)
    # clipping: every tile saturates at the full scale
    sat = L.forward(torch.full((1, 10), 50.0, dtype=F64))
    parts = [(50.0 * W[:, a * tile[0]:(a + 1) * tile[0]].sum(1)).clamp(-fs_w, fs_w) for a in range(n_tiles)]
    assert torch.allclose(sat[0], quantise(torch.stack(parts), 6, fs_w).sum(0), atol=1e-9)
    assert sat.abs().max() <= n_tiles * fs_w + 1e-12


def test_adc_clip_only_without_bits():
    L = layer(load_card("ideal"), periphery=Periphery.ideal(adc_range=0.2), tile=(10, 7), weights=rand_w((7, 10)))
    x = torch.rand(3, 10, generator=gen(8), dtype=F64)
    assert torch.allclose(L.forward(x), (x @ L.weights().T).clamp(-0.2, 0.2), atol=1e-12)


# --------------------------------------------------------------------------------------------- IR drop
def mna_grid(g: np.ndarray, r_row: float, r_col: float, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Modified nodal analysis of the tile grid, written independently of the library: every node, every resistor,
    the drivers and TIAs as ideal voltage sources to ground (a zero-resistance segment is a 0 V source).
    Returns the currents flowing from the grid into the bit-line sources (C,) and into the word-line sources (R,):
    the currents a TIA at virtual ground senses."""
    R, C = g.shape
    names: dict = {}

    def node(*key):
        return names.setdefault(key, len(names))

    resistors, sources = [], []  # (a, b, conductance); (a, b, volts) from a (+) to b (-); b = -1 is ground
    for r in range(R):
        for c in range(C):
            resistors.append((node("p", r, c), node("q", r, c), g[r, c]))
    for r in range(R):
        prev = node("src_row", r)
        sources.append((prev, -1, u[r], ("row", r)))
        for c in range(C):
            if r_row > 0:
                resistors.append((prev, node("p", r, c), 1.0 / r_row))
            else:
                sources.append((prev, node("p", r, c), 0.0, None))
            prev = node("p", r, c)
    for c in range(C):
        prev = node("src_col", c)
        sources.append((prev, -1, w[c], ("col", c)))
        for r in reversed(range(R)):
            if r_col > 0:
                resistors.append((prev, node("q", r, c), 1.0 / r_col))
            else:
                sources.append((prev, node("q", r, c), 0.0, None))
            prev = node("q", r, c)
    n, m = len(names), len(sources)
    A = sp.lil_matrix((n + m, n + m))
    b = np.zeros(n + m)
    for a_, b_, gg in resistors:
        A[a_, a_] += gg
        A[b_, b_] += gg
        A[a_, b_] -= gg
        A[b_, a_] -= gg
    for k, (a_, b_, volts, _) in enumerate(sources):
        A[a_, n + k] += 1
        A[n + k, a_] += 1
        if b_ >= 0:
            A[b_, n + k] -= 1
            A[n + k, b_] -= 1
        b[n + k] = volts
    sol = spsolve(A.tocsr(), b)
    i_col = np.zeros(C)
    i_row = np.zeros(R)
    for k, (_, _, _, tag) in enumerate(sources):
        if tag is not None:  # MNA branch current: from the + node (the line end) through the source to ground
            (i_col if tag[0] == "col" else i_row)[tag[1]] = sol[n + k]
    return i_col, i_row


@pytest.mark.parametrize("rr,rc", [(2.0, 3.0), (0.0, 5.0), (4.0, 0.0), (0.0, 0.0), (300.0, 100.0)])
def test_nodal_solver_matches_independent_mna(rr, rc):
    rng = np.random.default_rng(1)
    g = rng.uniform(1e-6, 2e-4, (5, 6))
    u = rng.uniform(-0.3, 0.3, (3, 5))
    w = rng.uniform(-0.3, 0.3, (3, 6))
    s = NodalSolver(g, rr, rc)
    fw, tr = s.forward(u), s.transpose(w)
    for k in range(3):
        ref_col, _ = mna_grid(g, rr, rc, u[k], np.zeros(6))
        _, ref_row = mna_grid(g, rr, rc, np.zeros(5), w[k])
        assert np.allclose(fw[k], ref_col, rtol=1e-9, atol=1e-18)
        assert np.allclose(tr[k], ref_row, rtol=1e-9, atol=1e-18)
    if rr == 0 and rc == 0:
        assert np.allclose(fw, u @ g, rtol=1e-12) and np.allclose(tr, w @ g.T, rtol=1e-12)
    if rr > 0 or rc > 0:
        gt = torch.from_numpy(g)
        vp, vq, it = solve_iterative(gt, rr, rc, torch.from_numpy(u), torch.zeros(3, 6, dtype=F64))
        assert np.allclose(currents_from_nodes(gt, vp, vq, "forward").numpy(), fw, rtol=1e-9, atol=0)
        vp, vq, it = solve_iterative(gt, rr, rc, torch.zeros(3, 5, dtype=F64), torch.from_numpy(w))
        assert np.allclose(currents_from_nodes(gt, vp, vq, "transpose").numpy(), tr, rtol=1e-9, atol=0)


def _layer_ir_reference(L: CrossbarLayer, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward / transpose outputs of an IR-drop layer from per-tile MNA solves of its programmed conductances."""
    gp, gn = L.array.pos.g.numpy(), L.array.neg.g.numpy()
    p = L.periphery
    s = p.volts_per_input
    fwd = np.zeros((x.shape[0], L.out_features))
    bwd = np.zeros((y.shape[0], L.in_features))
    for t in L.tiles:
        o, i = t.out_slice, t.in_slice
        grid = np.empty((t.rows, 2 * t.cols))
        grid[:, 0::2] = gp[o, i].T
        grid[:, 1::2] = gn[o, i].T
        for k in range(x.shape[0]):
            ic, _ = mna_grid(grid, p.r_row, p.r_col, x[k, i] * s, np.zeros(2 * t.cols))
            fwd[k, o] += ic[0::2] - ic[1::2]
        for k in range(y.shape[0]):
            drive = np.empty(2 * t.cols)
            drive[0::2], drive[1::2] = y[k, o] * s, -y[k, o] * s
            _, ir = mna_grid(grid, p.r_row, p.r_col, np.zeros(t.rows), drive)
            bwd[k, i] += ir
    return fwd / L.amps_per_weight_unit, bwd / L.amps_per_weight_unit


@pytest.mark.parametrize("solver", ["exact", "iterative"])
@pytest.mark.parametrize("preset", PRESETS)
def test_ir_drop_layer_matches_independent_nodal_solve(preset, solver):
    card = quiet(load_card(preset))
    # line resistance chosen so that the drop is a visible fraction for this card's conductances
    r = 0.02 / (card.g_max * 8 * 8)
    p = Periphery.ideal(r_row=r, r_col=1.5 * r, ir_solver=solver)
    L = layer(card, out_f=5, in_f=7, periphery=p, tile=(4, 3))
    L.set_weights(rand_w((5, 7)))
    x = torch.randn(2, 7, generator=gen(9), dtype=F64)
    y = torch.randn(2, 5, generator=gen(10), dtype=F64)
    ref_f, ref_t = _layer_ir_reference(L, x.numpy(), y.numpy())
    out_f, out_t = L.forward(x).numpy(), L.transpose(y).numpy()
    assert np.abs(out_f - ref_f).max() <= 1e-9 * np.abs(ref_f).max()
    assert np.abs(out_t - ref_t).max() <= 1e-9 * np.abs(ref_t).max()
    ideal_f = (x @ L.weights().T).numpy()
    assert np.abs(out_f - ideal_f).max() > 1e-6 * np.abs(ideal_f).max()  # the drop is there
    if solver == "exact":  # one factorisation per tile, reused for the batch and both directions
        assert L.stats()["ir_factorisations"] == len(L.tiles)


def test_ir_drop_error_grows_with_line_resistance():
    card = quiet(load_card("ideal"))
    x = torch.rand(4, 12, generator=gen(11), dtype=F64)
    errs = []
    for r in [0.0, 0.1, 1.0, 10.0, 100.0, 1000.0]:
        L = layer(card, out_f=6, in_f=12, periphery=Periphery.ideal(r_row=r, r_col=r), tile=(12, 6),
                  weights=rand_w((6, 12)))
        W = L.weights()
        yf, yt = L.forward(x), L.transpose(x[:, :6])
        if r == 0.0:
            assert torch.allclose(yf, x @ W.T, atol=1e-12) and torch.allclose(yt, x[:, :6] @ W, atol=1e-12)
        errs.append(float((yf - x @ W.T).norm() + (yt - x[:, :6] @ W).norm()))
    assert all(b > a for a, b in zip(errs, errs[1:])), errs


def test_iterative_solver_refuses_to_diverge():
    g = torch.full((20, 40), 1e-3, dtype=F64)
    with pytest.raises(RuntimeError, match="exact"):
        solve_iterative(g, 50.0, 50.0, torch.ones(1, 20, dtype=F64), torch.zeros(1, 40, dtype=F64), max_iter=50)


# --------------------------------------------------------------------------------------------- programming
def test_stochastic_rounding_is_unbiased_on_the_ideal_device():
    card = load_card("ideal")
    N = 20000
    A = DifferentialArray(card, (N,), generator=gen(12), dtype=F64, weights=torch.full((N,), 0.3, dtype=F64))
    req = (torch.rand(N, generator=gen(13), dtype=F64) - 0.5) * 6 * A.dw  # up to +-3 steps
    frac = (req / A.dw) - torch.floor(req / A.dw)
    got = A.program(req, mode="stochastic_rounding")
    err = got - req
    sigma = A.dw * math.sqrt(float((frac * (1 - frac)).sum())) / N
    assert abs(float(err.mean())) < 5 * sigma
    assert err.abs().max() < A.dw * (1 + 1e-9)
    # a sub-step request is realised with probability = its fraction of a step
    B = DifferentialArray(card, (N,), generator=gen(14), dtype=F64, weights=torch.full((N,), -0.2, dtype=F64))
    got = B.program(torch.full((N,), 0.3 * B.dw, dtype=F64))
    p = float((got.abs() > 0.5 * B.dw).double().mean())
    assert abs(p - 0.3) < 5 * math.sqrt(0.21 / N)
    # deterministic rounding is exact on the ideal device
    C = DifferentialArray(card, (N,), generator=gen(15), dtype=F64)
    got = C.program(req, mode="deterministic")
    assert torch.allclose(got, torch.round(req / C.dw) * C.dw, rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise", [True, False], ids=["noisy", "noise_free"])
@pytest.mark.parametrize("preset", PRESETS)
def test_finite_state_device_realises_the_request_statistically(preset, noise):
    card = linearised(load_card(preset))
    card = card if noise else card.ideal()
    N = 3000
    A = DifferentialArray(card, (N,), generator=gen(16), dtype=F64, weights=torch.zeros(N, dtype=F64))
    req = (torch.rand(N, generator=gen(17), dtype=F64) - 0.5) * 6 * A.dw
    got = A.program(req)
    err = got - req
    if noise:
        se = float(err.std()) / math.sqrt(N)
        assert abs(float(err.mean())) < 5 * se + 1e-12
    else:  # quantisation only: within one (nominal = actual) step
        assert err.abs().max() < A.dw * (1 + 1e-6)
        assert abs(float(err.mean())) < 5 * A.dw * 0.5 / math.sqrt(N)


@pytest.mark.parametrize("preset", PRESETS)
def test_manhattan_one_pulse_per_pair_with_the_right_sign(preset):
    card = load_card(preset).ideal()
    A = DifferentialArray(card, (6, 9), generator=gen(18), dtype=F64, weights=torch.zeros(6, 9, dtype=F64))
    dW = torch.randn(6, 9, generator=gen(19), dtype=F64)
    thr = 0.5
    got = A.program(dW, mode="manhattan", threshold=thr)
    p = A.pulses_per_device()
    per_pair = p["pos_up"] + p["pos_down"] + p["neg_up"] + p["neg_down"]
    assert torch.equal(per_pair, (dW.abs() > thr).long())
    assert torch.equal(torch.sign(got), torch.where(dW.abs() > thr, torch.sign(dW), 0))
    assert A.stats()["pulses"] == int((dW.abs() > thr).sum())


def _expected_split(A: DifferentialArray, m: int) -> dict[str, torch.Tensor]:
    """Pulses per device expected from the documented policy for a request of m steps (signed) from the state."""
    d = A.pos.g - A.neg.g
    z = torch.zeros(A.shape, dtype=torch.long)
    mm = torch.full(A.shape, abs(m), dtype=torch.long)
    if A.policy == "unidirectional":
        return {"pos_up": mm if m > 0 else z, "neg_up": z if m > 0 else mm, "pos_down": z, "neg_down": z}
    k = torch.minimum(torch.round(d.abs() / A.card.dg_nominal).long(), mm)
    if m > 0:  # grow: a negative weight first depresses G-, the rest potentiates G+
        dn = torch.where(d < 0, k, 0)
        return {"pos_up": mm - dn, "neg_down": dn, "pos_down": z, "neg_up": z}
    dn = torch.where(d > 0, k, 0)  # shrink: a positive weight first depresses G+, the rest potentiates G-
    return {"neg_up": mm - dn, "pos_down": dn, "pos_up": z, "neg_down": z}


@pytest.mark.parametrize("policy", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("preset", PRESETS)
def test_sign_change_goes_through_the_documented_device(preset, policy):
    card = quiet(load_card(preset))
    A = DifferentialArray(card, (3, 4), generator=gen(20), dtype=F64, policy=policy)
    A.set_weights(torch.full((3, 4), 0.1, dtype=F64), count=False)
    m = int(round(0.3 / A.dw))
    held = (A.pos.g - A.neg.g) > 0.5 * card.dg_nominal  # pairs whose devices can hold the positive weight
    assert held.float().mean() > 0.5
    for sign in (-1, 1, -1):  # through zero and back
        expect = _expected_split(A, sign * m)
        before = A.pulses_per_device()
        A.program(torch.full((3, 4), sign * m * A.dw, dtype=F64), mode="deterministic")
        after = A.pulses_per_device()
        for key in expect:
            assert torch.equal(after[key] - before[key], expect[key]), key
    if policy == "bidirectional":  # the first request crossed zero via a depression of G+
        assert (A.pulses_per_device()["pos_down"][held] > 0).all()


def test_sign_change_exact_values_on_the_ideal_device():
    card = load_card("ideal")
    A = DifferentialArray(card, (2,), generator=gen(21), dtype=F64, weights=torch.tensor([0.1, -0.1], dtype=F64))
    A.program(torch.tensor([-0.3, 0.3], dtype=F64), mode="deterministic")
    assert torch.allclose(A.weights(), torch.tensor([-0.2, 0.2], dtype=F64), atol=1e-12)
    assert torch.allclose(A.pos.g, torch.tensor([card.g_min, card.g_min + 0.2 * A.g0], dtype=F64), atol=1e-18)
    assert torch.allclose(A.neg.g, torch.tensor([card.g_min + 0.2 * A.g0, card.g_min], dtype=F64), atol=1e-18)
    p = A.pulses_per_device()
    assert p["pos_down"].tolist() == [100, 0] and p["neg_up"].tolist() == [200, 0]
    assert p["neg_down"].tolist() == [0, 100] and p["pos_up"].tolist() == [0, 200]
    U = DifferentialArray(card, (1,), generator=gen(21), dtype=F64, policy="unidirectional",
                          weights=torch.tensor([0.1], dtype=F64))
    U.program(torch.tensor([-0.3], dtype=F64), mode="deterministic")
    assert torch.allclose(U.weights(), torch.tensor([-0.2], dtype=F64), atol=1e-12)
    assert torch.allclose(U.pos.g, torch.tensor([card.g_min + 0.1 * U.g0], dtype=F64))
    assert U.pulses_per_device()["neg_up"].tolist() == [300]


def test_pulse_train_update_management_matches_aihwkit_formulas():
    p = PulseTrainParams(desired_bl=31)
    bl, a, b = pulse_train_scales(torch.tensor([1.0]), torch.tensor([0.5]), 0.01, 0.001, p)
    # UBLM: BL = ceil(lr x_max d_max / dw) = 5; A = B = sqrt(lr/(dw BL)) = sqrt(2); UM: A *= sqrt(x/d), B *= sqrt(d/x)
    assert bl.item() == 5 and a.item() == pytest.approx(2.0) and b.item() == pytest.approx(1.0)
    bl, a, b = pulse_train_scales(torch.tensor([1.0]), torch.tensor([1.0]), 1.0, 0.001, p)
    assert bl.item() == 31 and a.item() == pytest.approx(math.sqrt(1.0 / (0.001 * 31)))
    q = PulseTrainParams(desired_bl=10, update_bl_management=False, update_management=False)
    bl, a, b = pulse_train_scales(torch.tensor([3.0]), torch.tensor([0.1]), 0.02, 0.001, q)
    assert bl.item() == 10 and a.item() == pytest.approx(math.sqrt(2.0)) == b.item()
    r = PulseTrainParams(desired_bl=10, fixed_bl=False, update_bl_management=False, update_management=False)
    bl, a, b = pulse_train_scales(torch.tensor([3.0]), torch.tensor([0.1]), 0.05, 0.001, r)
    assert bl.item() == 50 and a.item() == 1.0 == b.item()


def test_pulse_train_is_unbiased_and_bounded_by_bl():
    card = load_card("ideal")
    A = DifferentialArray(card, (4, 6), generator=gen(22), dtype=F64)
    x = torch.tensor([0.9, -0.4, 0.1, 0.0, -1.0, 0.6], dtype=F64)
    d = torch.tensor([0.5, -0.2, 0.05, -0.7], dtype=F64)
    lr, T = 0.004, 4000
    n_up, n_down = A.pulse_train_counts(x.expand(T, 6), d.expand(T, 4), lr)
    mean = (n_up - n_down).double() * A.dw / T
    expect = lr * torch.outer(d, x)
    se = A.dw * (n_up + n_down).double().sqrt() / T
    assert ((mean - expect).abs() <= 5 * se + 1e-12).all()
    assert (n_up[expect < 0] == 0).all() and (n_down[expect > 0] == 0).all()  # coincidence signs
    bl, _, _ = pulse_train_scales(torch.tensor([0.9]), torch.tensor([0.7]), lr, A.dw, PulseTrainParams())
    assert ((n_up + n_down) <= T * int(bl)).all()
    # firing them realises dw per coincidence on the ideal device
    A.set_weights(torch.zeros(4, 6, dtype=F64), count=False)
    got = A.program_outer(x.expand(8, 6), d.expand(8, 4), lr, generator=gen(23))
    n_up, n_down = A.pulse_train_counts(x.expand(8, 6), d.expand(8, 4), lr, generator=gen(23))
    assert torch.allclose(got, (n_up - n_down).double() * A.dw, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_counters_and_energy_add_up(preset):
    card = replace(load_card(preset), energy_per_pulse=2.5e-12, energy_per_read=4e-15)
    L = layer(card, out_f=5, in_f=6, periphery=Periphery(adc_bits=8, adc_range=4.0), tile=(4, 3), seed=24)
    A = L.array
    N = 30
    L.set_weights(rand_w((5, 6), seed=25, scale=0.5))
    n_set = A.stats()["pulses_set"]
    dW = rand_w((5, 6), seed=26, scale=0.2)
    L.program(dW, mode="deterministic")
    n_det = int(torch.round(dW / A.dw).abs().sum())
    L.program(dW, mode="manhattan", threshold=0.1)
    n_man = int((dW.abs() > 0.1).sum())
    n_sr = int(A.pulse_counts(dW, generator=gen(27)).abs().sum())
    L.program(dW, generator=gen(27))
    x, d = torch.rand(3, 6, generator=gen(28), dtype=F64), torch.randn(3, 5, generator=gen(29), dtype=F64)
    up, dn = A.pulse_train_counts(x, d, 0.05, generator=gen(30))
    L.program_outer(x, d, 0.05, generator=gen(30))
    n_pt = int((up + dn).sum())
    L.forward(torch.rand(4, 6, generator=gen(31), dtype=F64))
    L.transpose(torch.rand(2, 5, generator=gen(32), dtype=F64))
    L.refresh(0.2)
    s = L.stats()
    assert s["pulses_program"] == n_det + n_man + n_sr + n_pt
    assert s["pulses"] == s["pulses_program"] + s["pulses_set"] + s["pulses_refresh"] == \
        s["pulses_potentiation"] + s["pulses_depression"] == s["pulses_g_pos"] + s["pulses_g_neg"]
    assert s["pulses_set"] == n_set
    # the pulse totals are the devices' own counters; pulses_program / set / refresh are counted per request
    assert s["pulses"] == int(A.pos.pulse_count.sum() + A.neg.pulse_count.sum())
    assert s["reads"] == 2 * N * (4 + 2) + s["reads_refresh"] and s["reads_refresh"] >= 2 * N
    assert s["energy_J"] == pytest.approx(2.5e-12 * s["pulses"] + 4e-15 * s["reads"], rel=1e-12)
    assert s["energy_pulses_J"] == pytest.approx(2.5e-12 * s["pulses"], rel=1e-12)
    assert s["energy_refresh_J"] == pytest.approx(2.5e-12 * s["pulses_refresh"] + 4e-15 * s["reads_refresh"])
    assert s["updates"] == 4 and s["forward_samples"] == 4 and s["transpose_samples"] == 2
    assert s["refresh_calls"] == 1


def _max_step(card, directions: str) -> float:
    n = card.n_states if 0 < card.n_states <= 4000 else 4000
    tr = pulse_response(card, n + 2, n + 2 if directions == "both" else 0, generator=gen(0), dtype=F64)
    return float(tr.diff(dim=0).abs().max())


@pytest.mark.parametrize("policy", ["unidirectional", "bidirectional"])
@pytest.mark.parametrize("preset", PRESETS)
def test_refresh_resets_saturated_pairs_and_keeps_the_weight(preset, policy):
    card = load_card(preset).ideal()
    A = DifferentialArray(card, (6, 8), generator=gen(33), dtype=F64, policy="unidirectional")
    A.set_weights(rand_w((6, 8), seed=34, scale=0.6), count=False)
    for k in range(4):  # unidirectional updates of both signs: both devices climb towards g_max
        A.program(0.3 * (-1) ** k + 0.2 * torch.randn(6, 8, generator=gen(35 + k), dtype=F64), mode="deterministic")
    A.policy = policy
    gp0, gn0, W0 = A.pos.g.clone(), A.neg.g.clone(), A.weights().clone()
    band = 0.1 * card.g_range
    sat = (torch.maximum(gp0, gn0) >= card.g_max - band) & (torch.minimum(gp0, gn0) > card.g_min + band)
    assert sat.any()
    s0 = A.stats()
    count0 = A.pos.pulse_count.sum() + A.neg.pulse_count.sum()
    n = A.refresh(0.1)
    s = A.stats()
    assert n == int(sat.sum()) == s["refreshes"] and s["refresh_calls"] == 1
    # untouched pairs unchanged, refreshed pairs: the device opposite to the weight's sign at its floor
    assert torch.equal(A.pos.g[~sat], gp0[~sat]) and torch.equal(A.neg.g[~sat], gn0[~sat])
    low = torch.where(W0 >= 0, A.neg.g - A.neg.g_min, A.pos.g - A.pos.g_min)
    assert (low[sat] == 0).all()
    assert (torch.minimum(A.pos.g, A.neg.g)[sat] < torch.minimum(gp0, gn0)[sat]).all()
    # the weight is kept within one step of the device
    step = _max_step(card, "up" if policy == "unidirectional" else "both") / A.g0
    assert (A.weights() - W0).abs().max() <= step * (1 + 1e-9)
    # the cost is counted
    added = int(A.pos.pulse_count.sum() + A.neg.pulse_count.sum() - count0)
    assert s["pulses_refresh"] - s0["pulses_refresh"] == added == s["pulses"] - s0["pulses"]
    assert s["reads_refresh"] >= 2 * 48 + 2 * n
    assert A.refresh(0.1) == 0  # nothing saturated any more (with these weights)


def test_tally_folds_its_int32_part_before_it_can_overflow():
    from neuromorph.devices.models import Tally
    t = Tally(torch.Size((3,)), torch.device("cpu"))
    big = torch.tensor([2 ** 30, -(2 ** 30), 7], dtype=torch.int32)
    for _ in range(5):  # 5·2^30 > 2^31: the int32 part must fold into the int64 total on the way
        t.add(big, bound=2 ** 30)
    t.add(torch.tensor([1, 1, 1], dtype=torch.int32))  # no bound: straight into the total
    t.add(torch.tensor([2 ** 40, 0, 0]), bound=2 ** 40)  # int64 counts
    assert t.value.dtype == torch.int64
    assert t.value.tolist() == [5 * 2 ** 30 + 1 + 2 ** 40, -5 * 2 ** 30 + 1, 36]


def test_dense_requests_count_past_the_int32_range():
    """The fine ideal card takes requests of 1e9 steps: a device's count passes 2^31 after a few (int64 totals)."""
    card = replace(load_card("ideal"), dw_min=1e-12)
    L = layer(card, out_f=4, in_f=5, seed=3)
    A = L.array
    A.set_weights(torch.zeros(4, 5, dtype=F64), count=False)
    n = torch.full((4, 5), 900_000_000, dtype=torch.int32)
    n[0] = -n[0]
    for _ in range(4):
        A.apply_weight_pulses(n, realised=False)
    per = A.pulses_per_device()
    assert per["pos_up"][1:].tolist() == [[3_600_000_000] * 5] * 3 and per["neg_up"][0].tolist() == [3_600_000_000] * 5
    assert A.stats()["pulses"] == 20 * 3_600_000_000 == int(A.pos.pulse_count.sum() + A.neg.pulse_count.sum())


def test_refresh_with_read_noise_is_counted_and_close():
    card = replace(load_card("ideal"), read_noise_std=1e-4)
    A = DifferentialArray(card, (50,), generator=gen(36), dtype=F64, policy="unidirectional")
    A.set_weights(torch.linspace(-0.5, 0.5, 50, dtype=F64), count=False)
    for k in range(2):
        A.program(torch.full((50,), 0.45 * (-1) ** k, dtype=F64), mode="deterministic")
    W0 = A.weights().clone()
    n = A.refresh(0.05)
    assert n > 0
    noise_w = 1e-4 * card.g_max / A.g0
    assert (A.weights() - W0).abs().max() <= A.dw + 10 * noise_w


# --------------------------------------------------------------------------------------------- reads, noise
def test_read_noise_and_counts():
    card = replace(load_card("ideal"), read_noise_std=0.01)
    L = layer(card, periphery=Periphery(), tile=(4, 3), weights=rand_w((7, 10)))
    x = torch.rand(3, 10, generator=gen(37), dtype=F64)
    y1, y2 = L.forward(x), L.forward(x)
    assert not torch.allclose(y1, y2)  # fresh read noise per read
    err = (y1 - x @ L.weights().T).abs().max()
    assert 0 < err < 10 * 0.01 * card.g_max / L.g0 * 10
    assert L.stats()["reads"] == 2 * 70 * 6
    q = layer(card, periphery=Periphery(read_noise=False), tile=(4, 3), weights=rand_w((7, 10)))
    assert torch.equal(q.forward(x), q.forward(x))


def test_drift_read_time_is_passed_to_the_devices():
    card = replace(load_card("ideal"), drift_nu=0.05, drift_t0=1.0)
    L = layer(card, periphery=Periphery(), tile=(10, 7), weights=rand_w((7, 10)))
    x = torch.rand(2, 10, generator=gen(38), dtype=F64)
    assert torch.allclose(L.forward(x, t=1.0), L.forward(x))
    gp, gn = L.array.pos.g, L.array.neg.g
    f = 1000.0 ** -0.05
    assert torch.allclose(L.forward(x, t=1000.0), x @ (((gp - gn) * f) / L.g0).T, atol=1e-12)


# --------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_error():
    card = load_card("ideal")
    with pytest.raises(ValueError, match="dac_bits = 1"):
        Periphery(dac_bits=1)
    with pytest.raises(ValueError, match="adc_bits = 0"):
        Periphery(adc_bits=0, adc_range=1.0)
    with pytest.raises(ValueError, match="needs adc_range"):
        Periphery(adc_bits=8)
    with pytest.raises(ValueError, match="v_read = -0.2"):
        Periphery(v_read=-0.2)
    with pytest.raises(ValueError, match="r_row = -1"):
        Periphery(r_row=-1.0)
    with pytest.raises(ValueError, match="ir_solver = 'cg'"):
        Periphery(ir_solver="cg")
    with pytest.raises(ValueError, match="adc_unit = 'V'"):
        Periphery(adc_unit="V")
    with pytest.raises(ValueError, match=r"tile_size = \(0, 4\)"):
        CrossbarLayer(3, 4, card, tile_size=(0, 4), generator=gen())
    with pytest.raises(ValueError, match="tile_size"):
        CrossbarLayer(3, 4, card, tile_size=(4,), generator=gen())
    with pytest.raises(ValueError, match="in_features = 0"):
        CrossbarLayer(3, 0, card, generator=gen())
    L = CrossbarLayer(3, 4, card, generator=gen())
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\).*\(batch, 4\)"):
        L.forward(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"y has shape"):
        L.transpose(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"delta_W has shape \(4, 3\)"):
        L.program(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="mode = 'sgd'"):
        L.program(torch.zeros(3, 4), mode="sgd")
    with pytest.raises(ValueError, match="negative conductance"):
        L.conductances_to_weights(torch.tensor([-1e-6]), torch.tensor([1e-6]))
    with pytest.raises(ValueError, match="policy = 'both'"):
        DifferentialArray(card, (2, 2), generator=gen(), policy="both")
    with pytest.raises(ValueError, match="mapping = 'mid'"):
        DifferentialArray(card, (2, 2), generator=gen(), mapping="mid")
    with pytest.raises(ValueError, match="g0 = -1"):
        DifferentialArray(card, (2, 2), generator=gen(), g0=-1.0)
    with pytest.raises(ValueError, match="threshold = 0.7"):
        L.refresh(0.7)
    with pytest.raises(ValueError, match="lr = -0.1"):
        L.program_outer(torch.zeros(4), torch.zeros(3), -0.1)
    with pytest.raises(ValueError, match="batch sizes differ"):
        L.program_outer(torch.zeros(2, 4), torch.zeros(3, 3), 0.1)
    with pytest.raises(ValueError, match="desired_bl = 0"):
        PulseTrainParams(desired_bl=0)
    with pytest.raises(ValueError, match="non-finite"):
        L.set_weights(torch.full((3, 4), float("nan")))


# --------------------------------------------------------------------------------------------- sparse programming
def noise_free(card):
    """The card without cycle-to-cycle / write noise (d2d spread, nonlinearity, bounds and stuck devices kept)."""
    return replace(card, c2c_sigma=0.0, dw_min_std=0.0, dw_min_std_add=0.0, dw_min_std_slope=0.0, write_noise_std=0.0)


def with_stuck(card):
    return replace(card, stuck_at_min_frac=0.05, stuck_at_max_frac=0.05)


SHAPE_SD = (40, 50)


def _pair(card, policy="bidirectional", dtype=F64) -> DifferentialArray:
    return DifferentialArray(card, SHAPE_SD, generator=gen(5), policy=policy, dtype=dtype,
                             weights=rand_w(SHAPE_SD, seed=6, scale=0.4))


def _sparse_counts(g: torch.Generator, frac: float, hi: int = 3) -> torch.Tensor:
    return torch.randint(1, hi + 1, SHAPE_SD, generator=g) * (torch.rand(SHAPE_SD, generator=g) < frac)


def _programming_sequence(A: DifferentialArray) -> list[torch.Tensor]:
    """Requests of every kind, mostly sparse (a few % of the pairs pulsed), some dense; realised ΔW of each."""
    g = gen(7)
    out = []
    for step in range(4):
        req = A.dw * torch.randn(SHAPE_SD, generator=g, dtype=F64)
        out.append(A.program(0.05 * req))  # stochastic rounding, ~4 % pulsed
        out.append(A.program(0.5 * req, mode="deterministic"))  # ~ a third pulsed: the dense path
        out.append(A.program(req * (torch.rand(SHAPE_SD, generator=g) < 0.03), mode="manhattan", threshold=0.1 * A.dw))
        up, down = _sparse_counts(g, 0.03), _sparse_counts(g, 0.03)
        out.append(A.fire_coincidences(up, down * (up == 0)))  # one request
        out.append(A.fire_coincidences(up, down))  # mixed: two requests
        n = _sparse_counts(g, 0.02) * torch.where(torch.rand(SHAPE_SD, generator=g) < 0.5, -1, 1)
        out.append(A.apply_weight_pulses(n))
        if step == 2:
            A.refresh(0.2)
    return out


def _counters(A: DifferentialArray) -> dict:
    return {**A.pulses_per_device(), "stats": A.stats(), "pos_count": A.pos.pulse_count,
            "neg_count": A.neg.pulse_count}


def _same_counters(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] if k == "stats" else torch.equal(a[k], b[k]) for k in a)


def _force(monkeypatch, sparse: bool) -> None:
    from neuromorph.devices import models
    monkeypatch.setattr(models, "SPARSE_FRACTION", 1.0 if sparse else -1.0)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("stuck", [False, True], ids=["", "stuck"])
@pytest.mark.parametrize("policy", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("preset", PRESETS)
def test_sparse_programming_equals_the_dense_path_noise_free(preset, policy, stuck, dtype, monkeypatch):
    """Programming the pulsed pairs only (flat indices) gives exactly the dense path's counters, conductances and
    realised ΔW on a noise-free device (the noise-free version of every preset, stuck devices included)."""
    card = noise_free(load_card(preset))
    card = with_stuck(card) if stuck else card
    res = {}
    for sparse in (True, False):
        _force(monkeypatch, sparse)
        A = _pair(card, policy, dtype)
        assert A.pos._deterministic()
        dws = _programming_sequence(A)
        res[sparse] = (A, torch.stack(dws), _counters(A))
    (S, dws_s, cnt_s), (D, dws_d, cnt_d) = res[True], res[False]
    assert _same_counters(cnt_s, cnt_d)
    assert cnt_s["stats"]["pulses_program"] > 0
    for dev_s, dev_d in ((S.pos, D.pos), (S.neg, D.neg)):
        assert torch.equal(dev_s.g, dev_d.g) and torch.equal(dev_s.g_persistent, dev_d.g_persistent)
    assert torch.equal(dws_s, dws_d)


@pytest.mark.parametrize("stuck", [False, True], ids=["", "stuck"])
@pytest.mark.parametrize("preset", PRESETS)
def test_sparse_programming_of_noisy_devices(preset, stuck, monkeypatch):
    """Noisy presets (their draws differ between the paths): the same counters, devices without pulses and stuck
    devices unchanged, bounds respected, ΔW zero on pairs without pulses; over several requests of given counts
    (unidirectional split: independent of the state) and for one bidirectional request."""
    card = load_card(preset)
    card = with_stuck(card) if stuck else card
    for policy, steps in (("unidirectional", 5), ("bidirectional", 1)):
        res = {}
        for sparse in (True, False):
            _force(monkeypatch, sparse)
            A = _pair(card, policy)
            g = gen(8)
            for _ in range(steps):
                before = [(dev, dev.g, dev.g_persistent, dev.pulse_count.clone()) for dev in (A.pos, A.neg)]
                n = _sparse_counts(g, 0.04) * torch.where(torch.rand(SHAPE_SD, generator=g) < 0.5, -1, 1)
                dw = A.apply_weight_pulses(n)
                assert torch.equal(dw[n == 0], torch.zeros_like(dw[n == 0]))
                for dev, g_before, gp_before, c_before in before:
                    still = (dev.pulse_count == c_before) | dev.stuck
                    assert bool((dev.pulse_count != c_before).any())  # the request reached this device
                    assert torch.equal(dev.g[still], g_before[still])
                    assert torch.equal(dev.g_persistent[still], gp_before[still])
                    gp = dev.g_persistent
                    assert bool(((gp >= dev.g_min) & (gp <= dev.g_max)).all())
                    assert bool((dev.g >= 0).all())
                    if dev.stuck.any():
                        assert torch.equal(gp[dev.stuck_min], dev.g_min[dev.stuck_min])
                        assert torch.equal(gp[dev.stuck_max], dev.g_max[dev.stuck_max])
            res[sparse] = _counters(A)
        assert _same_counters(res[True], res[False])
        assert res[True]["stats"]["pulses_program"] > 0


def test_sparse_requests_take_the_sparse_path_and_write_the_pulsed_devices_in_place(monkeypatch):
    """A request pulsing a few % of the pairs runs through ``apply_pulses_at`` (no dense device pass), a request
    pulsing most of them through the dense device pass (``_apply_counts``, as ``apply_pulses``); the sparse path
    writes the conductance tensors in place, moving their ``_version`` (the tiles cache ``G+ - G-`` and ``W`` keyed
    on the tensors and versions), and a noise-free layer read (the exact path) sees the new weights."""
    from neuromorph.devices import DeviceArray
    calls = []
    for meth in ("_apply_counts", "apply_pulses_at"):
        orig = getattr(DeviceArray, meth)
        monkeypatch.setattr(DeviceArray, meth, lambda self, *a, _o=orig, _m=meth, **k: calls.append(_m) or
                            _o(self, *a, **k))
    L = layer(load_card("ideal"), out_f=40, in_f=50, tile=(16, 16), seed=9)
    A = L.array
    L.set_weights(rand_w(SHAPE_SD, seed=10, scale=0.4))
    x = torch.rand(3, 50, generator=gen(11), dtype=F64)
    torch.testing.assert_close(L.forward(x), x @ A.weights().T, rtol=1e-12, atol=1e-12)
    kept = [(dev.g, dev.g.clone(), dev.g._version) for dev in (A.pos, A.neg)]
    n = _sparse_counts(gen(12), 0.03) * torch.where(torch.rand(SHAPE_SD, generator=gen(13)) < 0.5, -1, 1)
    dw = A.apply_weight_pulses(n)
    assert calls and set(calls) == {"apply_pulses_at"}
    torch.testing.assert_close(dw, n.double() * A.dw, rtol=0, atol=1e-12)
    for dev, (old, copy, version) in zip((A.pos, A.neg), kept):
        assert dev.g is old and dev.g._version > version and not torch.equal(dev.g, copy)
    torch.testing.assert_close(L.forward(x), x @ A.weights().T, rtol=1e-12, atol=1e-12)
    calls.clear()
    A.apply_weight_pulses(torch.ones(SHAPE_SD, dtype=torch.int64))
    assert "_apply_counts" in calls and "apply_pulses_at" not in calls


@pytest.mark.parametrize("path", ["sparse", "sparse, many chunks", "dense"])
def test_stochastic_rounding_of_small_requests_is_exact_bernoulli_per_device(path, monkeypatch):
    """Requests below ``SPARSE_ROUNDING`` steps are rounded by thinning a Bernoulli(p) process of candidates
    (geometric gaps) instead of a uniform per device: each device must still get ``sign · Bernoulli(|req|)``,
    independently of its neighbours in the flattened array. Same statistics as the dense path, and when the
    candidate draws come in many short chunks."""
    from neuromorph.crossbar import pairs
    if path == "dense":
        monkeypatch.setattr(pairs, "SPARSE_ROUNDING", -1.0)
    if path == "sparse, many chunks":
        monkeypatch.setattr(pairs, "_GAP_MARGIN", -8.0)  # every chunk falls short: the loop must go on
    A = DifferentialArray(load_card("ideal"), (20, 30), generator=gen(30), dtype=F64)
    req = (torch.rand(20, 30, generator=gen(31), dtype=F64) * 0.4 - 0.2)
    req[0, :5] = 0.0  # zero requests never pulse
    req[1, 0] = 0.2  # the largest request: candidates are kept with probability 1
    R = 4000
    n = torch.stack([A.round_request(req.clone()) for _ in range(R)]).to(F64)  # (R, 20, 30)
    assert set(n.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.all(n * torch.sign(req) >= 0)  # a pulse always has the sign of its request
    assert torch.all(n[:, 0, :5] == 0)
    p = req.abs()
    se = torch.sqrt(p * (1 - p) / R).clamp(min=1e-12)
    z = (n.mean(0) - req) / se
    assert float(z[p > 0].abs().max()) < 5.0
    assert abs(float(z[p > 0].mean())) < 0.2  # no bias overall (600 entries)
    # independence of neighbours in the flattened array (what the geometric gaps could correlate)
    f = (n - n.mean(0)).reshape(R, -1)
    cov = (f[:, :-1] * f[:, 1:]).mean(0)
    corr = cov / (f[:, :-1].std(0) * f[:, 1:].std(0)).clamp(min=1e-12)
    ok = (p.reshape(-1)[:-1] > 0.05) & (p.reshape(-1)[1:] > 0.05)
    assert abs(float(corr[ok].mean())) < 4 / math.sqrt(R * int(ok.sum()))
    assert float(corr[ok].abs().max()) < 6 / math.sqrt(R)


@pytest.mark.parametrize("preset", ["ideal", "taox_hfox", "reram_es"])
def test_sparse_programming_patches_the_read_cache_bit_for_bit(preset):
    """After a sparse request the layer patches its cached ``G+ - G-`` and ``W`` (and the bias-line split) at the
    written pairs only; the result must be bit-for-bit a rebuild, and an unrelated in-place change must drop it."""
    L = layer(quiet(load_card(preset)), out_f=40, in_f=50, tile=(16, 16), seed=21)
    A = L.array
    L.set_weights(rand_w(SHAPE_SD, seed=22, scale=0.4))
    x = torch.rand(3, 49, generator=gen(23), dtype=F64)
    L.forward(x, bias_line=True)  # builds w_main, w_last
    L._derived(A.pos.g, A.neg.g, "gd")
    L._derived(A.pos.g, A.neg.g, "w")
    for step in range(3):
        n = _sparse_counts(gen(24 + step), 0.03) * torch.where(torch.rand(SHAPE_SD, generator=gen(30 + step)) < 0.5,
                                                                -1, 1)
        A.apply_weight_pulses(n)
        c = L._cache
        assert c is not None and c[0] is A.pos.g  # patched, not dropped
        gd = A.pos.g - A.neg.g
        w = gd / L.g0
        assert torch.equal(c[3]["gd"], gd) and torch.equal(c[3]["w"], w)
        assert torch.equal(c[3]["w_main"], w[:, :-1]) and torch.equal(c[3]["w_last"], w[:, -1])
        torch.testing.assert_close(L.forward(x, bias_line=True), torch.cat([x, torch.ones(3, 1, dtype=F64)], 1) @ w.T,
                                   rtol=0, atol=1e-13)
    A.pos.g.add_(0.0)  # an in-place change the layer is not told of: the next read must not trust the cache
    A.apply_weight_pulses(_sparse_counts(gen(40), 0.03))
    assert L._cache is None


@pytest.mark.parametrize("preset", PRESETS)
def test_apply_pulses_at_equals_apply_pulses(preset, monkeypatch):
    """``DeviceArray.apply_pulses_at`` (flat indices, zero counts allowed) = ``apply_pulses`` of the scattered counts:
    the same conductances and pulse counts, the change returned at the indices; also when the pulsed devices exceed
    ``SPARSE_FRACTION`` (its dense fallback). Noise-free version of every preset, with stuck devices."""
    from neuromorph.devices import DeviceArray, models
    card = with_stuck(noise_free(load_card(preset)))
    g = gen(14)
    idx = torch.randperm(SHAPE_SD[0] * SHAPE_SD[1], generator=g)[:300].sort().values
    counts = torch.randint(-3, 4, (300,), generator=g)
    full = torch.zeros(SHAPE_SD, dtype=torch.int64)
    full.view(-1)[idx] = counts
    for frac in (models.SPARSE_FRACTION, -1.0):
        monkeypatch.setattr(models, "SPARSE_FRACTION", frac)
        a, b = (DeviceArray(card, SHAPE_SD, generator=gen(15), dtype=F64, g_init="center") for _ in range(2))
        dg_at = a.apply_pulses_at(idx, counts)
        dg = b.apply_pulses(full)
        assert torch.equal(a.g, b.g) and torch.equal(a.pulse_count, b.pulse_count)
        assert torch.equal(dg_at, dg.view(-1)[idx]) and not bool(dg.view(-1)[idx][counts == 0].any())
