"""The cost model (neuromorph.cost): every term against its closed form on a tiny network with hand-computed counts,
totals against the sum of their parts, scaling with the settling steps, zeros where no hardware works, NeuroSim's
write energy, the technology card's errors, the command and the sweep's Pareto front."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuromorph.cli import main
from neuromorph.config import config_from_dict
from neuromorph.cost import (
    CATEGORIES,
    TechnologyError,
    Workload,
    estimate,
    load_technology,
    measure,
    measure_inference,
    snapshot,
    technology_from_dict,
)
from neuromorph.devices import load_card
from neuromorph.hil import HardwareTrainer
from neuromorph.sweep_plots import pareto_front

TECH = load_technology("default")


def cfg(T=5, K=3, reread=False, update="stochastic_rounding", momentum=0.0, device="ideal", periphery=None):
    hw = {"device": device, "reread_input": reread, "read_noise": False, "update": update, **(periphery or {})}
    return config_from_dict({
        "name": "tiny", "model": {"layers": [64, 8, 10], "loss": "mse"},
        "ep": {"T": T, "K": K, "estimator": "symmetric"},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 7, "lr": [0.05, 0.05], "momentum": momentum,
                  "progress": False},
        "data": {"name": "digits", "n_train": 16, "n_test": 7},
        "output": {"checkpoint": False, "dir": "unused"}, "hardware": hw})


def infer(c):
    tr = HardwareTrainer(c)
    x, _ = tr.split("test")
    return tr, measure_inference(tr.sub, x.to(tr.net.dtype))


def test_reads_are_counted_as_the_phases_do_them():
    """64-8-10, batch 7, T = 5: the input array is read once per phase (its current is constant), the second every
    step from both sides; training batch 4 (free T = 5, two nudged phases of K = 3): 4 + 8 reads of w1, 20 + 24 of
    w2 from each side."""
    tr, r = infer(cfg())
    reads = {a["name"]: (a["forward_reads"], a["transpose_reads"]) for a in r.arrays}
    assert reads == {"w1": (7, 0), "w2": (35, 35)}
    before = snapshot(tr.hw)
    tr.train_epoch(0, max_batches=1, evaluate=False)
    after = snapshot(tr.hw)
    assert after["w1"]["forward_samples"] - before["w1"]["forward_samples"] == 4 + 2 * 4
    assert after["w2"]["forward_samples"] - before["w2"]["forward_samples"] == 4 * 5 + 2 * 4 * 3
    assert after["w2"]["transpose_samples"] - before["w2"]["transpose_samples"] == 4 * 5 + 2 * 4 * 3
    w = tr.sub.work
    assert (w.samples, w.node_steps, w.phase_rows) == (4, 4 * 5 + 2 * 4 * 3, 4 + 2 * 4)


def _uniform(hw, g: float) -> None:
    for arr in hw.arrays().values():
        for dev in (arr.array.pos, arr.array.neg):
            dev.g.fill_(g)


def test_every_term_equals_its_closed_form():
    """Hand-computed counts on 64-8-10 with a 5-bit ADC, 4-bit DAC, all devices at one conductance (so that the
    read energy Σ_ij V_i² G_ij t is exactly a·V²·ΣG·t): each term against its formula."""
    c = cfg(periphery={"adc_bits": 5, "adc_range": 8.0, "dac_bits": 4, "v_read_volt": 0.3})
    tr = HardwareTrainer(c)
    hw = tr.hw
    card = hw.card
    g = 0.5 * (card.g_min + card.g_max)
    _uniform(hw, g)
    before = {n: dict.fromkeys(("forward_samples", "transpose_samples", "pulses", "reads_refresh",
                                "accumulated", "request_macs"), 0) for n in hw.arrays()}
    after = {"w1": {"forward_samples": 10, "transpose_samples": 0, "pulses": 30, "reads_refresh": 4,
                    "accumulated": 0, "request_macs": 1234},
             "w2": {"forward_samples": 100, "transpose_samples": 90, "pulses": 7, "reads_refresh": 0,
                    "accumulated": 11, "request_macs": 0}}
    work = Workload(samples=5, node_steps=40, phase_rows=15, optimizer=None)
    act = [0.25, 0.16, 0.36]  # E[x²], E[s1²], E[s2²]
    rep = estimate(hw, before, after, work, TECH, act)
    e = {a["name"]: a["energy"] for a in rep.arrays}
    V, t = 0.3, TECH.read_pulse_width
    G1 = 2 * 8 * 65 * g  # both devices of 8 x 65 pairs
    G2 = 2 * 10 * 9 * g
    a1 = (0.25 * 64 + 1) / 65  # the bias line is held at full scale
    a2f, a2t = (0.16 * 8 + 1) / 9, 0.36
    assert e["w1"]["read"] == pytest.approx(V * V * t * G1 * a1 * 10, rel=1e-12)
    assert e["w2"]["read"] == pytest.approx(V * V * t * G2 * (a2f * 100 + a2t * 90), rel=1e-12)
    adc, dac = TECH.adc_fom * 2 ** 5, 4 * TECH.dac_energy_per_bit
    # one tile each: forward reads convert `out` columns, transposed reads `in` lines; activities at 5 bits
    assert e["w1"]["adc"] == pytest.approx(adc * (10 * 8 + 15 * 8), rel=1e-12)
    assert e["w2"]["adc"] == pytest.approx(adc * (100 * 10 + 90 * 9 + 15 * 10), rel=1e-12)
    assert e["w1"]["dac"] == pytest.approx(dac * 10 * 65, rel=1e-12)
    assert e["w2"]["dac"] == pytest.approx(dac * (100 * 9 + 90 * 10), rel=1e-12)
    C = hw.tau * hw.g0
    assert C == pytest.approx(1e-12)
    assert e["w1"]["neurons"] == pytest.approx(40 * 8 * C * V * V * 0.16, rel=1e-12)
    assert e["w2"]["neurons"] == pytest.approx(40 * 10 * C * V * V * 0.36, rel=1e-12)
    # the ideal card gives no write pulse: the technology's default V² G t, refresh reads at one device's read
    ep = TECH.write_voltage ** 2 * g * TECH.write_pulse_width
    assert e["w1"]["write"] == pytest.approx(30 * ep + 4 * V * V * t * g, rel=1e-12)
    # the digital request's multiply-adds as counted; an accumulator word read, added to and written back
    assert e["w1"]["digital"] == pytest.approx(1234 * TECH.mac_energy, rel=1e-12)
    assert e["w2"]["digital"] == pytest.approx(11 * (2 * TECH.sram_word_energy + TECH.add_energy), rel=1e-12)
    # latency: the busiest array's reads, one read = t_read + 8 conversions; writes row by row
    cyc = t + TECH.columns_per_adc * TECH.adc_conversion_time * 5 / 8  # a 5-bit SAR: 5 of the 8-bit ADC's cycles
    assert rep.latency["settle"] == pytest.approx(190 / 5 * cyc, rel=1e-12)
    assert rep.latency["write"] == pytest.approx(max(30 / 65, 7 / 9) * TECH.write_pulse_width / 5, rel=1e-12)
    # area: cells, ADCs (ceil(cols/8) per sensing side used), DACs per driven line, neurons, no digital state
    F2 = TECH.feature_size ** 2
    area = {a["name"]: a["area"] for a in rep.arrays}
    assert area["w1"]["cells"] == pytest.approx(2 * 8 * 65 * 16 * F2, rel=1e-12)
    assert area["w1"]["adc"] == pytest.approx(1 * TECH.adc_area * 2 ** (5 - 8), rel=1e-12)
    assert area["w2"]["adc"] == pytest.approx((2 + 2) * TECH.adc_area * 2 ** (5 - 8), rel=1e-12)
    assert area["w2"]["dac"] == pytest.approx((9 + 10) * 4 * TECH.dac_area_per_bit, rel=1e-12)
    assert area["w1"]["neurons"] == pytest.approx(8 * (TECH.neuron_area + C / TECH.capacitance_density), rel=1e-12)
    assert area["w1"]["digital"] == 0
    # totals are the sums of the per-layer parts
    d = rep.to_dict()
    for cat in CATEGORIES:
        assert d["energy_per_sample_by_term_J"][cat] == pytest.approx(sum(e[n][cat] for n in e) / 5, rel=1e-12)
    assert d["energy_per_sample_J"] == pytest.approx(sum(sum(v.values()) for v in e.values()) / 5, rel=1e-12)
    assert d["area_m2"] == pytest.approx(sum(sum(a.values()) for a in area.values()), rel=1e-12)
    assert d["gpu_flops_per_sample"] == pytest.approx((2 * 8 * 65 * 10 + 2 * 10 * 9 * 190
                                                       + 5 * 2 * 2 * (8 * 65 + 10 * 9)) / 5, rel=1e-12)


@pytest.mark.parametrize("mode", ["stochastic_rounding", "mixed_precision", "pulse_train", "optimizer"])
def test_request_multiply_adds_are_counted_as_computed(mode):
    """``postᵀ pre`` in the periphery: rows × outputs × the input columns not all zero (a column of zeros is
    skipped, its products are zero); the optimizer's dense estimate: every column; pulse trains: none (the
    coincidences happen in the array)."""
    c = cfg(momentum=0.9 if mode == "optimizer" else 0.0)
    tr = HardwareTrainer(c)
    hw = tr.hw
    g = torch.Generator().manual_seed(3)
    pre1 = torch.rand(3, 65, generator=g, dtype=tr.net.dtype)
    pre1[:, 5:15] = 0.0  # ten input columns with no activity in any row
    rows = {"w1": (pre1, torch.rand(3, 8, generator=g, dtype=tr.net.dtype)),
            "w2": (torch.rand(5, 9, generator=g, dtype=tr.net.dtype), torch.rand(5, 10, generator=g,
                                                                               dtype=tr.net.dtype))}
    opt = tr.sub.optimizer if mode == "optimizer" else None
    hw.apply_update(rows, 3, [0.05, 0.05], mode="stochastic_rounding" if mode == "optimizer" else mode,
                    optimizer=opt)
    expect = {"stochastic_rounding": {"w1": 3 * 8 * 55, "w2": 5 * 10 * 9},
              "mixed_precision": {"w1": 3 * 8 * 55, "w2": 5 * 10 * 9},
              "optimizer": {"w1": 3 * 8 * 65, "w2": 5 * 10 * 9},
              "pulse_train": {}}[mode]
    assert hw.request_macs == expect


def test_read_energy_equals_the_sum_over_devices_of_one_read():
    """One forward read of w1 at uniform conductance: Σ_i (V_r x_i)² Σ_j (G+ + G−)_ij t_r, summed directly."""
    tr = HardwareTrainer(cfg(periphery={"v_read_volt": 0.25}))
    hw = tr.hw
    g = 1.3 * hw.card.g_min
    _uniform(hw, g)
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(1), dtype=tr.net.dtype)
    before = snapshot(hw)
    hw.arrays()["w1"].forward(x, bias_line=True)
    after = snapshot(hw)
    rep = estimate(hw, before, after, Workload(samples=3, training=False), TECH,
                   [float(x.square().mean()), 0.0, 0.0])
    u = torch.cat([x, torch.ones(3, 1, dtype=x.dtype)], 1).double()
    direct = float(((0.25 * u) ** 2).sum() * 8 * 2 * g * TECH.read_pulse_width)
    w1 = next(a for a in rep.arrays if a["name"] == "w1")
    assert w1["energy"]["read"] == pytest.approx(direct, rel=1e-9)


def test_doubling_the_settling_steps_doubles_the_settling_energy_and_latency():
    """With the input array read at every step (``reread_input``), every settling term of an inference is
    linear in T."""
    _, r1 = infer(cfg(T=6, reread=True))
    _, r2 = infer(cfg(T=12, reread=True))
    for cat in ("read", "neurons", "adc", "dac"):
        assert r2.energy[cat] == pytest.approx(2 * r1.energy[cat], rel=1e-9), cat
    assert r2.latency["settle"] == pytest.approx(2 * r1.latency["settle"], rel=1e-12)
    assert r2.total_energy == pytest.approx(2 * r1.total_energy, rel=1e-9)


def test_what_does_not_work_costs_nothing():
    """An inference writes nothing and computes no update; pulse-train updates without an optimizer need no
    digital work; an array never read from its outputs has no transposed ADCs; the ideal card's pulses cost the
    technology's default pulse (said in a note)."""
    _, r = infer(cfg())
    assert r.energy["write"] == 0 and r.energy["digital"] == 0 and r.latency["write"] == 0
    w1 = next(a for a in r.arrays if a["name"] == "w1")
    assert w1["transpose_reads"] == 0
    assert w1["area"]["adc"] == pytest.approx(1 * TECH.adc_area_of(TECH.adc_bits))
    rep = measure(cfg(update="pulse_train"), batches=1)["training"]
    assert rep.energy["digital"] == 0 and rep.energy["write"] > 0
    assert any("default pulse" in n for n in rep.notes)
    assert any("ideal ADC" in n for n in rep.notes)  # costed at the technology's bits, and said
    rep = measure(cfg(momentum=0.9), batches=2)["training"]
    sgd = measure(cfg(), batches=2)["training"]
    extra = sum(2 * 1 * TECH.sram_word_energy + 2 * TECH.add_energy for _ in range(2)) * (8 * 65 + 10 * 9)
    def state(r):  # the digital energy beside the requests' multiply-adds
        return r.energy["digital"] - sum(a["request_macs"] for a in r.arrays) * TECH.mac_energy

    assert state(rep) == pytest.approx(extra, rel=1e-9) and state(sgd) == pytest.approx(0.0, abs=1e-20)
    assert rep.area["digital"] == pytest.approx((8 * 65 + 10 * 9) * 32 * 160 * TECH.feature_size ** 2)
    # mixed precision: each accumulated request reads, adds to and writes back one accumulator word (only the
    # columns of inputs that are not all zero are accumulated: at most one word per weight and update)
    tr = HardwareTrainer(cfg(update="mixed_precision"))
    tr.train_epoch(0, max_batches=2, evaluate=False)
    mp, words = tr.sub.last_cost, sum(tr.hw.accumulated.values())
    weights = 8 * 65 + 10 * 9
    assert 0 < words <= 2 * weights
    acc = words * (2 * TECH.sram_word_energy + TECH.add_energy)
    assert state(mp) == pytest.approx(acc, rel=1e-9)
    assert mp.area["digital"] == pytest.approx(weights * 32 * 160 * TECH.feature_size ** 2)


@pytest.mark.parametrize("card", ["pcmo", "ag_a_si", "epiram", "taox_hfox"])
def test_write_energy_is_neurosims_v2_g_t(card):
    """NeuroSim (AnalogNVM::Write): V² · G · t per pulse, G the device's conductance: the cards whose pulses the
    NeuroSim V3.0 table lists, a real update's pulses at the array's mean conductance."""
    c = load_card(card)
    pulses = [(v, t) for v, t in ((c.write_voltage_ltp, c.write_pulse_width_ltp),
                                  (c.write_voltage_ltd, c.write_pulse_width_ltd)) if v and t]
    assert pulses, f"{card} lists its write pulses"
    tr = HardwareTrainer(cfg(device=card))
    before = snapshot(tr.hw)
    tr.train_epoch(0, max_batches=1, evaluate=False)
    rep = tr.sub.last_cost
    fired = 0
    for a in rep.arrays:
        arr = tr.hw.arrays()[a["name"]]
        g = float(arr.array.pos.g.double().sum() + arr.array.neg.g.double().sum()) / (2 * arr.array.numel)
        per_pulse = sum(v * v * g * t for v, t in pulses) / len(pulses)
        n = snapshot(tr.hw)[a["name"]]["pulses"] - before[a["name"]]["pulses"]
        fired += n
        assert a["energy"]["write"] == pytest.approx(n * per_pulse, rel=1e-9)
        assert a["energy_per_pulse_J"] == pytest.approx(per_pulse, rel=1e-9)
    assert fired > 0


def test_technology_card_errors_name_the_key_and_what_is_allowed(tmp_path):
    good = {"technology": {"name": "t"}, "parameters": {}}
    with pytest.raises(TechnologyError, match="missing: feature_size"):
        technology_from_dict(good, "t.toml")
    base = {k: {"value": 1, "unit": u, "source": "s"} for k, u in (
        ("feature_size", "nm"), ("cell_area", "F2"), ("read_pulse_width", "ns"), ("columns_per_adc", "columns"),
        ("adc_bits", "bits"), ("dac_bits", "bits"), ("adc_fom", "fJ"), ("adc_conversion_time", "ns"),
        ("adc_area", "um2"), ("adc_area_bits", "bits"), ("dac_energy_per_bit", "pJ"), ("dac_area_per_bit", "um2"),
        ("neuron_area", "um2"), ("capacitance_density", "fF/um2"), ("write_voltage", "V"),
        ("write_pulse_width", "ns"), ("mac_energy", "pJ"), ("add_energy", "pJ"), ("sram_word_energy", "pJ"),
        ("word_bits", "bits"), ("sram_cell_area", "F2"), ("gpu_power", "W"), ("gpu_peak_flops", "TFLOP/s"))}
    t = technology_from_dict({"technology": {"name": "t"}, "parameters": base})
    assert t.feature_size == pytest.approx(1e-9) and t.gpu_energy_per_flop == pytest.approx(1e-12)
    for change, match in (({"adc_fom": {"value": 1, "unit": "V", "source": "s"}}, "adc_fom.unit = 'V'.*fJ"),
                          ({"adc_fom": {"value": -1, "unit": "fJ", "source": "s"}}, "finite number > 0"),
                          ({"adc_fom": {"value": 1, "unit": "fJ"}}, "needs its source"),
                          ({"adc_fom": 3.0}, "write \\{ value"),
                          ({"adc_bitz": {"value": 1, "unit": "bits", "source": "s"}}, "unknown parameter"),
                          ({"adc_bits": {"value": 2.5, "unit": "bits", "source": "s"}}, "an integer")):
        with pytest.raises(TechnologyError, match=match):
            technology_from_dict({"technology": {"name": "t"}, "parameters": {**base, **change}}, "t.toml")
    with pytest.raises(TechnologyError, match="unknown technology card 'nope'.*default"):
        load_technology("nope")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(TechnologyError, match="bad.toml.*not UTF-8"):
        load_technology(bad)
    # every constant of the shipped card has a source
    assert set(TECH.sources) == set(base) and all(TECH.sources.values())


def test_cost_command_writes_the_table_the_numbers_and_the_breakdown(tmp_path, capsys):
    out = tmp_path / "cost"
    assert main(["cost", "--config", "configs/compare_digits.toml", "--device", "taox_hfox", "--batches", "1",
                 "--out", str(out)]) == 0
    d = json.loads((out / "cost.json").read_text())
    assert d["training"]["energy_per_sample_J"] > d["inference"]["energy_per_sample_J"] > 0
    assert (out / "cost_breakdown.png").stat().st_size > 1000
    text = (out / "cost.md").read_text()
    assert "| w1 |" in text and "Largest term" in text and "Latency per training sample" in text
    if not torch.cuda.is_available():  # no measured GPU figure is claimed without a GPU
        assert d["gpu_measured"] is None and "No GPU here" in text
    capsys.readouterr()
    assert main(["cost", "--config", "configs/compare_digits.toml", "--technology", "nope", "--out", str(out)]) != 0
    assert "unknown technology card 'nope'; available: default" in capsys.readouterr().err


def test_compare_and_epoch_metrics_carry_the_cost(tmp_path):
    from neuromorph.hil import compare

    c = config_from_dict({**json.loads(json.dumps({"name": "tiny"})),
                          "model": {"layers": [64, 8, 10], "loss": "mse"}, "ep": {"T": 5, "K": 3},
                          "train": {"epochs": 1, "batch_size": 8, "lr": [0.05, 0.05], "momentum": 0.0,
                                    "progress": False},
                          "data": {"name": "digits", "n_train": 32, "n_test": 16},
                          "output": {"dir": str(tmp_path / "c")}, "hardware": {"device": "pcmo"}})
    s = compare(c, tmp_path / "c", log=None)
    assert s["cost"]["energy_per_sample_J"] > 0 and s["cost"]["samples"] == 32
    line = json.loads((tmp_path / "c/hardware/metrics.jsonl").read_text().splitlines()[0])
    assert line["cost_energy_per_sample_J"] == pytest.approx(s["cost"]["energy_per_sample_J"])
    assert "energy per training sample (cost model" in (tmp_path / "c/comparison.md").read_text()


def test_pareto_front():
    pts = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 60.0), (2.0, 83.0)]
    assert pareto_front(pts) == [(0.5, 60.0), (1.0, 80.0), (2.0, 85.0)]
    assert pareto_front([]) == []
    assert math.isfinite(TECH.adc_energy(8))
