"""Device layer: models, non-idealities, cards, fit and CLI (neuromorph.devices).

Parametrised over every preset found by list_presets(), so a new card in device_models/ is tested when it is added.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from neuromorph.devices import (
    DeviceArray,
    DeviceCard,
    DeviceCardError,
    card_to_toml,
    list_presets,
    load_card,
    pulse_response,
)
from neuromorph.devices import neurosim as ns
from neuromorph.devices.cards import STEP_MODELS, card_from_dict
from neuromorph.devices.cli import add_parser
from neuromorph.devices.fit import fit_csv

PRESETS = list_presets()
REQUIRED = {"ag_a_si", "taox_hfox", "pcmo", "alox_hfo2", "gst_pcm", "epiram", "hzo_fefet", "reram_es", "reram_sb",
            "ecram", "idealized", "ideal"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sweep_len(card: DeviceCard) -> int:
    return card.n_states if 0 < card.n_states <= 10000 else 300


def robust_std(x: torch.Tensor) -> float:
    q = torch.quantile(x.double().flatten(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    return float((q[1] - q[0]) / 1.3489795)


def _d2d_off(card: DeviceCard) -> DeviceCard:
    return replace(card, **{k: 0.0 for k in ("dw_min_dtod", "up_down_dtod", "w_max_dtod", "w_min_dtod",
                                             "gamma_up_dtod", "gamma_down_dtod", "nl_dtod", "g_min_dtod",
                                             "g_max_dtod")})


# ---------------------------------------------------------------------- cards
def test_required_presets_present():
    assert REQUIRED <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_card_is_cited_and_round_trips(name, tmp_path):
    card = load_card(name)
    assert card.citation and card.source, "every card cites its paper and the file its numbers come from"
    assert dict(card.provenance).get("g_max"), "the conductance range states where it comes from"
    p = tmp_path / f"{name}.toml"
    p.write_text(card_to_toml(card))
    again = load_card(p)
    for f in fields(DeviceCard):
        if f.name != "provenance":
            a, b = getattr(card, f.name), getattr(again, f.name)
            assert a == pytest.approx(b, rel=1e-15) if isinstance(a, float) else a == b, f.name


@pytest.mark.parametrize("name", PRESETS)
def test_ideal_switches_every_nonideality_off(name):
    card = load_card(name).ideal()
    for k in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_max_dtod", "w_min_dtod", "write_noise_std",
              "c2c_sigma", "nl_dtod", "read_noise_std", "stuck_at_min_frac", "stuck_at_max_frac", "drift_nu"):
        assert getattr(card, k) == 0.0
    arr = DeviceArray(card, (50,), generator=gen(), dtype=torch.float64)
    assert torch.all(arr.g_min == arr.g_min[0]) and torch.all(arr.g_max == arr.g_max[0])


def test_units_are_converted():
    base = {"device": {"name": "x", "model": "neurosim"},
            "parameters": {"g_max": {"value": 100, "unit": "kohm"}, "g_min": {"value": 1, "unit": "Mohm"},
                           "max_pulses": {"value": 10, "unit": "levels"},
                           "c2c_sigma": {"value": 3.7, "unit": "%range"},
                           "drift_t0": {"value": 20, "unit": "ms"}, "energy_per_pulse": {"value": 2, "unit": "pJ"}}}
    c = card_from_dict(base)
    assert c.g_max == 1e-5 and c.g_min == 1e-6 and c.c2c_sigma == 0.037
    assert c.drift_t0 == 0.02 and c.energy_per_pulse == 2e-12 and c.n_states == 10
    es = load_card("reram_es")
    assert es.dw_min == pytest.approx(0.00135 / 2)  # 'w' units / (w_max - w_min)
    assert es.n_states == round(2 / 0.00135)


# ---------------------------------------------------------------------- bad cards
GOOD = """
[device]
name = "test"
model = "neurosim"
[parameters]
g_min = { value = 1e-6, unit = "S" }
g_max = { value = 1e-5, unit = "S" }
max_pulses = { value = 32, unit = "levels" }
nl_ltp = { value = 1.0, unit = "1" }
"""


def refused_card(tmp_path, old: str, new: str) -> str:
    """The error of loading :data:`GOOD` with ``old`` replaced by ``new`` (a DeviceCardError naming the file)."""
    assert old in GOOD
    p = tmp_path / "bad.toml"
    p.write_text(GOOD.replace(old, new))
    with pytest.raises(DeviceCardError) as e:
        load_card(p)
    msg = str(e.value)
    assert str(p) in msg
    return msg


@pytest.mark.parametrize("old,new,words", [
    ('g_max = { value = 1e-5, unit = "S" }', "g_max = 1e-5", ["g_max", "missing unit", "S, mS"]),
    ('g_max = { value = 1e-5, unit = "S" }', "g_max = { value = 1e-5 }", ["g_max", "missing unit"]),
    ('g_max = { value = 1e-5, unit = "S" }', 'g_max = { value = 1e-5, unit = "V" }', ["g_max", "'V'", "allowed"]),
    ('g_min = { value = 1e-6, unit = "S" }', 'g_min = { value = 2e-5, unit = "S" }', ["g_min", "G_min must be <"]),
    ('g_min = { value = 1e-6, unit = "S" }', 'g_min = { value = 1e-5, unit = "S" }', ["g_min", "G_min must be <"]),
    ('max_pulses = { value = 32, unit = "levels" }', 'max_pulses = { value = -5, unit = "levels" }',
     ["max_pulses", "-5", ">= 0"]),
    ('max_pulses = { value = 32, unit = "levels" }', 'max_pulses = { value = 0, unit = "levels" }',
     ["max_pulses", "levels"]),
    ('max_pulses = { value = 32, unit = "levels" }', 'max_pulses = { value = 12.5, unit = "levels" }',
     ["max_pulses", "integer"]),
    ('nl_ltp = { value = 1.0, unit = "1" }', 'nl_ltpp = { value = 1.0, unit = "1" }', ["nl_ltpp", "unknown"]),
    ('nl_ltp = { value = 1.0, unit = "1" }', 'nl_ltp = { value = "big", unit = "1" }', ["nl_ltp", "number"]),
    ('nl_ltp = { value = 1.0, unit = "1" }', 'nl_ltp = { value = 12.0, unit = "1" }', ["nl_ltp", "[-9, 9]"]),
    ('nl_ltp = { value = 1.0, unit = "1" }', 'gamma_up = { value = 0.1, unit = "1" }',
     ["gamma_up", "does not apply to model 'neurosim'"]),
    ('nl_ltp = { value = 1.0, unit = "1" }', 'nl_ltp = { value = 1.0, unit = "1", colour = "red" }',
     ["colour", "unknown field"]),
    ('model = "neurosim"', 'model = "magic"', ["model", "magic", "allowed models"]),
    ('name = "test"', 'name = "test"\nvendor = "x"', ["device.vendor", "unknown key"]),
    ("[parameters]", "[extra]\nx = 1\n[parameters]", ["extra", "unknown"]),
])
def test_bad_cards_are_refused_with_a_clear_error(tmp_path, old, new, words):
    msg = refused_card(tmp_path, old, new)
    for w in words:
        assert w in msg, (w, msg)


def test_good_card_loads_and_bad_names_are_refused(tmp_path):
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    assert load_card(p).n_states == 32
    assert load_card(str(p)).max_pulses == 32
    with pytest.raises(DeviceCardError, match="unknown device preset 'nope'.*ag_a_si"):
        load_card("nope")
    with pytest.raises(DeviceCardError, match="G_min must be <"):
        replace(load_card("ideal"), g_min=1.0)
    with pytest.raises(DeviceCardError, match="dw_min"):
        DeviceCard(name="x", model="constant_step", g_min=0.0, g_max=1e-6)
    bool_bad = GOOD.replace('model = "neurosim"', 'model = "linear_step"').replace(
        'max_pulses = { value = 32, unit = "levels" }\nnl_ltp = { value = 1.0, unit = "1" }',
        'dw_min = { value = 0.01, unit = "range" }\nmult_noise = "yes"')
    p.write_text(bool_bad)
    with pytest.raises(DeviceCardError, match="mult_noise.*boolean"):
        load_card(p)


# ---------------------------------------------------------------------- pulse responses
@pytest.mark.parametrize("name", PRESETS)
def test_pulse_response_is_monotone_and_bounded(name):
    card = load_card(name).ideal()
    n = sweep_len(card)
    tr, arr = pulse_response(card, n, n, generator=gen(), return_array=True)
    up, down = tr[: n + 1, 0], tr[n:, 0]
    lo, hi = arr.g_min[0].item(), arr.g_max[0].item()
    eps = 1e-12 * card.g_range
    assert float(tr.min()) >= lo - eps and float(tr.max()) <= hi + eps
    assert torch.all(up.diff() >= -eps) and torch.all(down.diff() <= eps)
    assert up[-1] > up[0] and down[-1] < down[0]


@pytest.mark.parametrize("name", PRESETS)
def test_noisy_pulse_response_stays_within_device_bounds(name):
    card = replace(load_card(name), write_noise_std=0.0)  # write noise is on the apparent (read) value only
    n = min(sweep_len(card), 120)
    tr, arr = pulse_response(card, n, n, n_devices=6, generator=gen(1), return_array=True)
    eps = 1e-12 * card.g_range
    assert torch.all(tr >= arr.g_min - eps) and torch.all(tr <= arr.g_max + eps)
    assert torch.isfinite(tr).all()


@pytest.mark.parametrize("name", [p for p in PRESETS if load_card(p).model in ("neurosim", "constant_step", "ideal")])
def test_finite_state_models_have_the_cards_number_of_levels(name):
    card = load_card(name).ideal()
    arr = DeviceArray(card, (1,), generator=gen(), dtype=torch.float64)
    n_up, n_dn = arr.n_levels_between_bounds("up"), arr.n_levels_between_bounds("down")
    if card.model == "neurosim":
        assert (n_up, n_dn) == (card.max_pulses, card.max_pulses_down) and n_up == card.n_states
    tr = pulse_response(card, n_up + 3, n_dn + 3, generator=gen(), dtype=torch.float64)[:, 0]
    tol = 1e-9 * card.g_range
    top = card.g_max
    reached = torch.nonzero(tr[: n_up + 4] >= top - tol)[0].item()
    assert reached == n_up, "potentiation from G_min reaches G_max after exactly the card's levels"
    down = tr[n_up + 3:]
    reached = torch.nonzero(down <= card.g_min + tol)[0].item()
    assert reached == n_dn
    distinct = torch.unique(tr[: n_up + 1]).numel()
    assert distinct == n_up + 1  # the levels between the bounds, both included


@pytest.mark.parametrize("name", [p for p in PRESETS if load_card(p).model == "neurosim"])
def test_neurosim_curve_equals_closed_form_and_label_sign(name):
    card = load_card(name).ideal()
    pu, pd = card.max_pulses, card.max_pulses_down
    tr = pulse_response(card, pu, pd, generator=gen(), dtype=torch.float64)[:, 0].numpy()
    lo, hi = card.g_min, card.g_max

    def closed(p, nl, pmax):
        a = ns.param_a(nl, pmax)
        if math.isinf(a):
            return lo + (hi - lo) * p / pmax
        b = (hi - lo) / (1 - np.exp(-pmax / a))
        return b * (1 - np.exp(-p / a)) + lo

    k = np.arange(pu + 1)
    np.testing.assert_allclose(tr[: pu + 1], closed(k, card.nl_ltp, pu), rtol=0, atol=1e-12 * (hi - lo))
    j = np.arange(pd + 1)
    np.testing.assert_allclose(tr[pu:], closed(pd - j, card.nl_ltd, pd), rtol=0, atol=1e-12 * (hi - lo))
    # asymmetry / label sign: ratio of first to last step is exp(+-(P_max - 1)/A)
    up_steps, dn_steps = np.diff(tr[: pu + 1]), -np.diff(tr[pu:])
    a_u, a_d = ns.param_a(card.nl_ltp, pu), ns.param_a(card.nl_ltd, pd)
    assert up_steps[0] / up_steps[-1] == pytest.approx(math.exp((pu - 1) / a_u), rel=1e-8)
    assert dn_steps[0] / dn_steps[-1] == pytest.approx(math.exp(-(pd - 1) / a_d), rel=1e-8)
    if card.nl_ltp > 0:
        assert up_steps[0] > up_steps[-1]  # saturating potentiation
    if card.nl_ltd < 0:
        assert dn_steps[0] > dn_steps[-1]  # saturating depression (mirror image)
    elif card.nl_ltd > 0:
        assert dn_steps[0] < dn_steps[-1]  # same curve as LTP, traversed backwards


def test_neurosim_label_to_a_reproduces_the_published_table():
    # MLP_NeuroSim_V3.0 formula.cpp getParamA (6 decimals) and documents/Nonlinearity-NormA.htm (4 decimals)
    table6 = {0.01: 126.268958, 0.02: 63.134314, 0.04: 31.566827, 0.07: 18.037668, 0.1: 12.625807,
              0.19: 6.643650, 0.61: 2.063266, 0.63: 1.997332, 1.0: 1.251653, 1.51: 0.819477, 9.0: 0.022810}
    table4 = {3.01: 0.3853, 4.51: 0.2266, 6.01: 0.1351, 7.51: 0.0702}
    for nl, a in table6.items():
        assert abs(ns.a_norm_from_label(nl) - a) <= 6e-7
        assert ns.a_norm_from_label(-nl) == -ns.a_norm_from_label(nl)
    for nl, a in table4.items():
        assert abs(ns.a_norm_from_label(nl) - a) <= 6e-5
    for nl in (0.04, 1.46, -4.88, 6.76):
        assert ns.label_from_a_norm(ns.a_norm_from_label(nl)) == pytest.approx(nl, rel=1e-9)
    assert math.isinf(ns.a_norm_from_label(0.0))


def _analytic_steps(card: DeviceCard, w: float) -> tuple[float, float]:
    """aihwkit's mean up / down step [in w] at weight w for a device with nominal parameters (no d2d)."""
    dw = card.dw_min * card.w_range
    s_up = dw * (1 + min(card.up_down, 0.0))
    s_dn = dw * (1 - max(card.up_down, 0.0))
    if card.model == "constant_step":
        return s_up, s_dn
    if card.model in ("linear_step", "soft_bounds"):
        g_u, g_d = (1.0, 1.0) if card.model == "soft_bounds" else (card.gamma_up, card.gamma_down)
        return s_up * (1 - g_u * w / card.w_max), s_dn * (1 - g_d * w / card.w_min)
    z = 2 * card.a * w / card.w_range + card.b
    y_up = max(1 - card.A_up * math.exp(card.gamma_up * z), 0.0)
    y_dn = max(1 - card.A_down * math.exp(-card.gamma_down * z), 0.0)
    return y_up * s_up, y_dn * s_dn


@pytest.mark.parametrize("name", [p for p in PRESETS if load_card(p).model in STEP_MODELS])
def test_step_models_reproduce_the_cards_asymmetry(name):
    card = load_card(name).ideal()
    w0 = 0.5 * (card.w_min + card.w_max)
    s = card.g_range / card.w_range
    g0 = card.g_ref + s * w0
    arr = DeviceArray(card, (2,), generator=gen(), dtype=torch.float64, g_init=g0)
    dg = arr.apply_pulses(torch.tensor([1, -1]))
    up, dn = _analytic_steps(card, w0)
    assert dg[0].item() == pytest.approx(up * s, rel=1e-9)
    assert -dg[1].item() == pytest.approx(min(dn * s, g0 - card.g_min), rel=1e-9)
    if card.up_down > 0 and card.model == "constant_step":
        assert -dg[1] < dg[0]


# ---------------------------------------------------------------------- variability statistics
@pytest.mark.parametrize("name", [p for p in PRESETS if load_card(p).model in STEP_MODELS])
def test_step_model_device_to_device_spreads(name):
    card = load_card(name)
    arr = DeviceArray(card, (200, 200), generator=gen(7), dtype=torch.float64)
    s = card.g_range / card.w_range
    b_max = (arr.g_max - card.g_ref) / s
    b_min = (arr.g_min - card.g_ref) / s  # some devices may be floored at 0 S: use median / quartiles
    assert float(b_max.median()) == pytest.approx(card.w_max, rel=0.01)
    assert robust_std(b_max) == pytest.approx(card.w_max_dtod * card.w_max, rel=0.05, abs=1e-12)
    if card.w_min != 0:
        assert float(b_min.median()) == pytest.approx(card.w_min, rel=0.01)
        assert robust_std(b_min) == pytest.approx(card.w_min_dtod * abs(card.w_min), rel=0.05, abs=1e-12)
    dw = card.dw_min * card.w_range
    bias_up = min(card.up_down, 0.0)
    expected_sd = math.hypot(card.dw_min_dtod, card.up_down_dtod) * dw
    assert float(arr.s_up.mean()) == pytest.approx((1 + bias_up) * dw, rel=0.02)
    assert float(arr.s_up.std()) == pytest.approx(expected_sd, rel=0.05, abs=1e-15)
    diff = arr.s_up - arr.s_dn  # = (up_down + 2 r) dw: the up/down asymmetry and its d2d spread
    se = 2 * card.up_down_dtod * dw / math.sqrt(diff.numel())
    assert float(diff.mean()) == pytest.approx(card.up_down * dw, abs=5 * se + 1e-12 * dw)
    if card.up_down_dtod > 0:
        assert float(diff.std()) == pytest.approx(2 * card.up_down_dtod * dw, rel=0.05)


def test_neurosim_device_to_device_spreads():
    card = replace(load_card("taox_hfox"), nl_dtod=0.2, g_min_dtod=0.05, g_max_dtod=0.04)
    arr = DeviceArray(card, (4000,), generator=gen(3), dtype=torch.float64)
    assert float((arr.g_max / card.g_max).std()) == pytest.approx(0.04, rel=0.06)
    assert float((arr.g_min / card.g_min).std()) == pytest.approx(0.05, rel=0.06)
    labels = torch.tensor([ns.label_from_a_norm(a / card.max_pulses) for a in arr.a_ltp[:1500].tolist()])
    assert float(labels.mean()) == pytest.approx(card.nl_ltp, abs=0.02)
    assert float(labels.std()) == pytest.approx(0.2, rel=0.08)


def _expected_c2c(card: DeviceCard, w0: float) -> float:
    """Std [S] of the change of one potentiation pulse at w0 (noise-free d2d)."""
    s = card.g_range / card.w_range
    up, _ = _analytic_steps(card, w0)
    if card.model == "exp_step" and (card.dw_min_std_add > 0 or card.dw_min_std_slope > 0):
        return card.dw_min_std * (up + card.dw_min_std_add * card.w_range + card.dw_min_std_slope * abs(w0)) * s
    if card.model in ("linear_step", "soft_bounds") and not card.mult_noise:
        return card.dw_min_std * card.dw_min * card.w_range * (1 + min(card.up_down, 0.0)) * s
    return card.dw_min_std * up * s


@pytest.mark.parametrize("name", PRESETS)
def test_cycle_to_cycle_noise_matches_its_parameter(name):
    card = _d2d_off(load_card(name))
    card = replace(card, write_noise_std=0.0, read_noise_std=0.0)
    if card.model in STEP_MODELS:
        if card.dw_min_std == 0:
            card = replace(card, dw_min_std=0.3)
        w0 = card.w_min + 0.3 * card.w_range
        g0 = card.g_ref + card.g_range / card.w_range * w0
        expected = _expected_c2c(card, w0)
        n = 1
    else:
        if card.c2c_sigma == 0:
            card = replace(card, c2c_sigma=0.01)
        g0 = card.g_min + 0.3 * card.g_range
        n = 4
        expected = card.c2c_sigma * card.g_range * math.sqrt(n)
    arr = DeviceArray(card, (40000,), generator=gen(11), dtype=torch.float64, g_init=g0)
    ref = DeviceArray(card.ideal(), (1,), generator=gen(11), dtype=torch.float64, g_init=g0)
    dg = arr.apply_pulses(n)
    mean_dg = ref.apply_pulses(n).item()
    inside = (arr.g > arr.g_min) & (arr.g < arr.g_max)  # unclipped devices
    assert inside.float().mean() > 0.97
    assert float(dg[inside].std()) == pytest.approx(expected, rel=0.05)
    if card.model in STEP_MODELS and card.model != "exp_step" or card.model in ("neurosim", "ideal"):
        assert float(dg[inside].mean()) == pytest.approx(mean_dg, rel=0.05, abs=0.02 * expected)


@pytest.mark.parametrize("name", [p for p in PRESETS if load_card(p).write_noise_std > 0])
def test_write_noise_matches_its_parameter(name):
    card = _d2d_off(load_card(name))
    arr = DeviceArray(card, (30000,), generator=gen(5), dtype=torch.float64, g_init="center")
    arr.apply_pulses(1)
    noise = arr.g - arr.g_persistent
    sigma = card.write_noise_std * card.dw_min * card.g_range
    assert float(noise.std()) == pytest.approx(sigma, rel=0.05)


def test_stuck_devices_fractions_and_behaviour():
    card = replace(load_card("taox_hfox").ideal(), stuck_at_min_frac=0.1, stuck_at_max_frac=0.05)
    n = 100_000
    arr = DeviceArray(card, (n,), generator=gen(2), dtype=torch.float64, g_init="center")
    for frac, mask in ((0.1, arr.stuck_min), (0.05, arr.stuck_max)):
        assert abs(mask.float().mean().item() - frac) < 4 * math.sqrt(frac * (1 - frac) / n)
    assert not (arr.stuck_min & arr.stuck_max).any()
    assert torch.equal(arr.g[arr.stuck_min], arr.g_min[arr.stuck_min])
    assert torch.equal(arr.g[arr.stuck_max], arr.g_max[arr.stuck_max])
    dg = arr.apply_pulses(torch.full((n,), 5))
    assert torch.all(dg[arr.stuck] == 0) and torch.all(dg[~arr.stuck] > 0)
    assert torch.all(arr.pulse_count == 5)  # the pulses are sent (and cost energy) even to stuck devices
    arr.set_conductance(card.g_max)
    assert torch.equal(arr.g[arr.stuck_min], arr.g_min[arr.stuck_min])
    r = arr.read()
    assert torch.equal(r[arr.stuck_min], arr.g_min[arr.stuck_min])


def test_read_noise_is_fresh_per_read_and_matches_its_parameter():
    card = replace(load_card("ag_a_si"), read_noise_std=0.02)
    arr = DeviceArray(card, (50000,), generator=gen(4), dtype=torch.float64, g_init="center")
    r1, r2 = arr.read(), arr.read()
    assert not torch.equal(r1, r2)
    assert float((r1 - arr.g).std()) == pytest.approx(0.02 * card.g_max, rel=0.03)
    assert float((r1 - arr.g).mean()) == pytest.approx(0.0, abs=4 * 0.02 * card.g_max / math.sqrt(50000))
    assert arr.read_count == 2
    g2 = torch.Generator().manual_seed(99)
    assert torch.equal(arr.read(generator=g2), arr.read(generator=torch.Generator().manual_seed(99)))


def test_drift_exponent_statistics_and_law():
    card = replace(load_card("gst_pcm"), drift_nu=0.05, drift_nu_std=0.01, drift_t0=1.0)
    arr = DeviceArray(card, (40000,), generator=gen(8), dtype=torch.float64, g_init="center")
    assert float(arr.nu.mean()) == pytest.approx(0.05, rel=0.01)
    assert float(arr.nu.std()) == pytest.approx(0.01, rel=0.03)
    g = arr.g.clone()
    t = 1e4
    r = arr.read(t=t)
    ok = ~arr.stuck
    torch.testing.assert_close(r[ok], g[ok] * (t / 1.0) ** (-arr.nu[ok]), rtol=1e-12, atol=0)
    nu_hat = -torch.log(r / g) / math.log(t)
    torch.testing.assert_close(nu_hat, arr.nu, rtol=1e-9, atol=1e-12)
    assert torch.equal(arr.read(t=0.5), g)  # no drift before t0
    assert torch.equal(arr.read(), g)


@pytest.mark.parametrize("name", PRESETS)
def test_same_seed_same_array(name):
    card = replace(load_card(name), stuck_at_min_frac=0.01, drift_nu=0.02, drift_nu_std=0.01, read_noise_std=0.01)
    a = DeviceArray(card, (30, 20), generator=gen(42))
    b = DeviceArray(card, (30, 20), generator=gen(42))
    c = DeviceArray(card, (30, 20), generator=gen(43))
    for attr in ("g", "g_min", "g_max", "stuck_min", "stuck_max", "nu"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr
    n = torch.randint(-6, 7, (30, 20), generator=gen(1))
    assert torch.equal(a.apply_pulses(n), b.apply_pulses(n))
    assert torch.equal(a.read(t=100.0), b.read(t=100.0))
    assert not torch.equal(a.g_max, c.g_max) or not torch.equal(a.nu, c.nu)


# ---------------------------------------------------------------------- ideal device, programming, accounting
def test_ideal_device_is_exact():
    card = load_card("ideal")
    arr = DeviceArray(card, (4, 5), generator=gen(), dtype=torch.float64)
    n = torch.arange(20).reshape(4, 5) * 7 - 30
    n = n.clamp(min=0)
    dg = arr.apply_pulses(n)
    torch.testing.assert_close(dg, n.double() * card.dg_nominal, rtol=1e-14, atol=0)
    torch.testing.assert_close(arr.g, card.g_min + n.double() * card.dg_nominal, rtol=1e-15, atol=0)
    target = torch.linspace(card.g_min, card.g_max, 20, dtype=torch.float64).reshape(4, 5)
    arr.set_conductance(target)
    assert torch.equal(arr.g, target)
    assert torch.equal(arr.read(), target) and torch.equal(arr.read(t=1e6), target)
    before = arr.g.clone()
    arr.apply_pulses(torch.full((4, 5), -3))
    torch.testing.assert_close(arr.g, (before - 3 * card.dg_nominal).clamp(min=card.g_min), rtol=1e-15, atol=0)
    assert arr.n_levels_between_bounds() == 1000


def test_apply_pulses_api_and_energy():
    card = replace(load_card("hzo_fefet"), energy_per_pulse=2e-12, energy_per_read=1e-15)
    arr = DeviceArray(card, (3, 4), generator=gen(), dtype=torch.float32)
    assert arr.g.dtype == torch.float32 and arr.g.shape == (3, 4)
    with pytest.raises(ValueError, match="integers"):
        arr.apply_pulses(torch.full((3, 4), 0.5))
    n = torch.tensor([[1, -2, 3, 0]] * 3)
    arr.apply_pulses(n)
    arr.apply_pulses(2)
    assert arr.pulse_count.dtype == torch.int64
    assert torch.equal(arr.pulse_count, n.abs() + 2)
    arr.read()
    assert arr.energy() == pytest.approx(float((n.abs() + 2).sum()) * 2e-12 + 12 * 1e-15)
    arr.reset("max")
    assert torch.equal(arr.g, arr.g_max)
    assert arr.dg_nominal == pytest.approx(card.g_range / 32)


def test_set_conductance_snaps_neurosim_levels_and_counts_pulses():
    card = load_card("taox_hfox").ideal()
    arr = DeviceArray(card, (5,), generator=gen(), dtype=torch.float64)
    tgt = torch.full((5,), card.g_min + 0.37 * card.g_range, dtype=torch.float64)
    g = arr.set_conductance(tgt)
    p = ns.inverse_curve(g, arr.a_ltp, card.max_pulses, arr.g_min, arr.g_max)
    torch.testing.assert_close(p, torch.round(p), rtol=0, atol=1e-6)
    assert torch.all((g - tgt).abs() <= card.g_range / card.max_pulses)
    assert torch.all(arr.pulse_count == torch.round((g - card.g_min) / card.dg_nominal).long())
    # masked programming: only the selected devices change (state and counts)
    es = DeviceArray(load_card("reram_es"), (6,), generator=gen(1), dtype=torch.float64, g_init="center")
    g_before, app_before = es.g_persistent.clone(), es.g.clone()
    mask = torch.tensor([True, False, True, False, False, True])
    es.reset("max", mask=mask)
    assert torch.equal(es.g_persistent[mask], es.g_max[mask])
    assert torch.equal(es.g_persistent[~mask], g_before[~mask]) and torch.equal(es.g[~mask], app_before[~mask])
    assert torch.all(es.pulse_count[~mask] == 0) and torch.all(es.pulse_count[mask] > 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_shapes_and_dtype():
    card = load_card("reram_es")
    arr = DeviceArray(card, (64, 64), generator=torch.Generator().manual_seed(0), device="cuda")
    dg = arr.apply_pulses(torch.randint(-3, 4, (64, 64), device="cuda"))
    assert dg.is_cuda and arr.read(t=10.0).is_cuda and arr.g.dtype == torch.float32


# ---------------------------------------------------------------------- fit
def _write_csv(path: Path, trace: np.ndarray, n_up: int) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pulse", "conductance_S", "direction"])
        for i, g in enumerate(trace):
            w.writerow([i, f"{g:.10e}", "" if i == 0 else ("up" if i <= n_up else "down")])
    return path


def test_fit_recovers_a_neurosim_card(tmp_path):
    true = replace(load_card("taox_hfox").ideal(), nl_ltp=2.0, nl_ltd=-3.0, c2c_sigma=0.002)
    tr = pulse_response(true, 128, 128, generator=gen(6))[:, 0].numpy()
    csv_path = _write_csv(tmp_path / "meas.csv", tr, 128)
    res = fit_csv(csv_path, "neurosim")
    c = res.card
    assert c.max_pulses == 128 and c.max_pulses_ltd == 0
    assert c.nl_ltp == pytest.approx(2.0, abs=0.2) and c.nl_ltd == pytest.approx(-3.0, abs=0.2)
    assert c.g_min == pytest.approx(true.g_min, rel=0.03) and c.g_max == pytest.approx(true.g_max, rel=0.02)
    assert c.c2c_sigma == pytest.approx(0.002, rel=0.25)


def test_fit_recovers_soft_bounds_and_linear_step_cards(tmp_path):
    # additive noise (the soft-bounds fit's noise model; the card default is aihwkit's mult_noise = true)
    sb = DeviceCard(name="sb", model="soft_bounds", g_min=1e-6, g_max=1e-5, dw_min=0.01, up_down=0.2,
                    dw_min_std=0.1, mult_noise=False)
    tr = pulse_response(sb, 300, 300, generator=gen(2))[:, 0].numpy()
    c = fit_csv(_write_csv(tmp_path / "sb.csv", tr, 300), "soft_bounds").card
    assert c.dw_min == pytest.approx(0.01, rel=0.05) and c.up_down == pytest.approx(0.2, abs=0.04)
    assert c.g_max == pytest.approx(1e-5, rel=0.03) and c.dw_min_std == pytest.approx(0.1, rel=0.25)
    # without a direction column: potentiation up to the maximum, then depression (a clean, averaged curve)
    tr = pulse_response(sb.ideal(), 300, 300, generator=gen(2))[:, 0].numpy()
    p = tmp_path / "sb_nodir.csv"
    p.write_text("pulse,conductance_S\n" + "".join(f"{i},{g:.12e}\n" for i, g in enumerate(tr)))
    c = fit_csv(p, "soft_bounds", objective="trajectory").card
    assert c.dw_min == pytest.approx(0.01, rel=0.01) and c.up_down == pytest.approx(0.2, abs=0.01)
    ls = DeviceCard(name="ls", model="linear_step", g_min=1e-6, g_max=1e-5, dw_min=0.005, up_down=-0.1,
                    gamma_up=0.3, gamma_down=0.6, dw_min_std=0.05, mult_noise=True)
    tr = pulse_response(ls, 250, 250, generator=gen(3))[:, 0].numpy()
    c = fit_csv(_write_csv(tmp_path / "ls.csv", tr, 250), "linear_step").card
    assert c.dw_min == pytest.approx(0.005, rel=0.03) and c.up_down == pytest.approx(-0.1, abs=0.03)
    assert c.gamma_up == pytest.approx(0.3, abs=0.05) and c.gamma_down == pytest.approx(0.6, abs=0.05)


def test_fit_rejects_bad_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("pulse,G\n0,1\n1,2\n2,3\n3,4\n")
    with pytest.raises(ValueError, match="conductance_S"):
        fit_csv(p, "neurosim")
    p.write_text("pulse,conductance_S,direction\n0,1e-6,\n1,2e-6,sideways\n2,3e-6,up\n3,4e-6,up\n")
    with pytest.raises(ValueError, match="line 3.*sideways"):
        fit_csv(p, "soft_bounds")
    with pytest.raises(ValueError, match="fit model"):
        fit_csv(_write_csv(tmp_path / "x.csv", np.linspace(1e-6, 2e-6, 8), 7), "exp_step")


# ---------------------------------------------------------------------- CLI
def _parse(*argv):
    p = argparse.ArgumentParser(prog="neuromorph")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return p.parse_args(list(argv))


def test_cli_list_and_show(capsys, tmp_path):
    a = _parse("device", "list")
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in PRESETS)
    a = _parse("device", "show", "ag_a_si")
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "3.846" in out and "nS" in out and "Cell.cpp" in out and "Jo et al." in out
    a = _parse("device", "show", "pcmo")
    a.func(a)
    assert "unverified values" in capsys.readouterr().out
    user = tmp_path / "mine.toml"
    user.write_text(GOOD)
    a = _parse("device", "show", str(user))
    assert a.func(a) == 0 and "test" in capsys.readouterr().out
    a = _parse("device", "show", "nope")
    with pytest.raises(DeviceCardError):
        a.func(a)


def test_cli_plot_writes_png_and_svg(tmp_path, capsys):
    out = tmp_path / "fig" / "pr.png"
    a = _parse("device", "plot", "ag_a_si", "--out", str(out), "--devices", "4", "--seed", "1")
    assert a.func(a) == 0
    assert out.stat().st_size > 5000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".svg").stat().st_size > 5000
    a = _parse("device", "plot", "reram_es", "--out", str(tmp_path / "es.png"), "--pulses", "40", "--devices", "3")
    assert a.func(a) == 0 and (tmp_path / "es.png").stat().st_size > 0


def test_cli_fit_writes_a_loadable_card(tmp_path, capsys):
    true = replace(load_card("hzo_fefet").ideal(), c2c_sigma=0.001)
    tr = pulse_response(true, 32, 32, generator=gen(9))[:, 0].numpy()
    csv_path = _write_csv(tmp_path / "fefet.csv", tr, 32)
    out = tmp_path / "fitted.toml"
    a = _parse("device", "fit", str(csv_path), "--model", "neurosim", "--out", str(out))
    assert a.func(a) == 0
    assert "nl_ltp" in capsys.readouterr().out
    c = load_card(out)
    assert c.model == "neurosim" and c.max_pulses == 32
    assert c.nl_ltp == pytest.approx(1.75, abs=0.2) and c.nl_ltd == pytest.approx(1.46, abs=0.2)


@pytest.mark.parametrize("name", PRESETS)
def test_sparse_pulse_path_equals_the_dense_one(name, monkeypatch):
    """apply_pulses runs the model on the pulsed devices only when few are pulsed: same result as the dense path
    (exactly for a noise-free device; for a noisy one the untouched devices stay put and the bounds hold)."""
    from neuromorph.devices import models

    card = load_card(name)
    gen_n = torch.Generator().manual_seed(3)
    n = torch.randint(-3, 4, (40, 50), generator=gen_n) * (torch.rand(40, 50, generator=gen_n) < 0.05)
    out = {}
    for frac in (models.SPARSE_FRACTION, -1.0):
        monkeypatch.setattr(models, "SPARSE_FRACTION", frac)
        arr = DeviceArray(card, (40, 50), generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                          g_init="center")
        g0 = arr.g.clone()
        dg = arr.apply_pulses(n)
        out[frac] = (arr.g.clone(), dg, g0, arr)
    (gs, dgs, g0, arr), (gd, dgd, _, _) = out[models.SPARSE_FRACTION], out[-1.0]
    untouched = (n == 0) | arr.stuck
    assert torch.equal(gs[untouched], g0[untouched]) and torch.equal(dgs[untouched], torch.zeros_like(dgs[untouched]))
    assert bool(((gs >= arr.g_min - 1e-15) & (gs <= arr.g_max + 1e-15)).all())
    if arr._deterministic():
        torch.testing.assert_close(gs, gd, rtol=0, atol=1e-18)
        torch.testing.assert_close(dgs, dgd, rtol=0, atol=1e-18)


def test_pulse_energy_is_the_cards_value_or_neurosims_v2gt_estimate():
    card = load_card("ag_a_si")
    g_mid = 0.5 * (card.g_min + card.g_max)
    expected = 0.5 * (3.2**2 * g_mid * 300e-6 + 2.8**2 * g_mid * 300e-6)  # Cell.cpp write pulses
    assert card.energy_per_pulse == 0 and card.pulse_energy == pytest.approx(expected, rel=1e-12)
    assert replace(card, energy_per_pulse=2e-12).pulse_energy == 2e-12
    assert load_card("ideal").pulse_energy == 0.0
