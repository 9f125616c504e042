r"""Hardware cost model: energy, latency and area of EP training and inference on the simulated chip.

Everything is computed from what the simulation counts while it trains (no separate performance model to keep in
step with it): per array the reads from the input side and from the output side (one *read* = one input vector
applied to every device of the array: a sample of a dense layer, a position of a convolution), the programming
pulses and the reads that refresh spent; per phase the rows and steps the neurons integrated; per update the
digital periphery the update policy needs (:mod:`neuromorph.policies`, mixed precision's accumulators). The
constants come from a *technology card* (``device_models/technology/<name>.toml``, every number with its unit and
source, like the device cards), the device card (conductances, write pulses) and the run's periphery (read
voltage, DAC/ADC bits, tile size, node capacitance).

Energy terms of an array ``k`` (``out x in`` differential pairs, ``T_in x T_out`` tiles):

=================  ============================================================================================
read               ``V_r² · t_r · ΣG · (a_f·R_f + a_t·R_t)``: every device of the array conducts for the read
                   pulse ``t_r`` at the line voltage ``V = V_r·u/x_max`` of its input (``R_f``/``R_t`` reads from
                   the input/output side, ``a = E[(u/x_max)²]`` their activity factor, ``ΣG`` the sum of all
                   device conductances: ``Σ_ij V_i² G_ij t_r = a V_r² ΣG t_r`` for activities independent of
                   the conductances)
ADC                ``E_ADC(b) · (R_f·T_in·out + R_t·T_out·in)``: every tile converts its partial sums;
                   ``E_ADC(b) = FOM_W · 2^b`` (the Walden figure of merit); plus the conversion of each
                   node's steady state for the update (``activity_bits``) at the end of every phase
DAC                ``E_DAC(b) · (R_f·T_out·in + R_t·T_in·out)``, ``E_DAC(b) = b · E_1bit`` (a line driver per
                   bit: ISAAC's 1-bit DACs applying an input bit by bit)
neurons            ``C · V_r² · a_node`` per node and settling step (a sample-and-hold integrator recharged each
                   step of the discrete-time relaxation), for the nodes the array drives
write              ``pulses · E_pulse``: the card's measured pulse energy, else NeuroSim's
                   ``V_w² · G · t_w`` (``AnalogNVM::Write``, with ``G`` the array's mean device conductance),
                   else the technology card's default write pulse (marked as an assumption); plus the reads of
                   refresh at the read energy of one device
digital            the update requests ``postᵀ pre`` the periphery computes, their multiply-adds as counted
                   (:attr:`HardwareNetwork.request_macs`: rows × outputs × input columns not all zero; none for
                   pulse trains, fired in the array); an accumulator word read, added to and written back per
                   accumulated request (mixed precision, TTv2); the periphery optimizer's state words (two
                   accesses each) and its arithmetic per weight and update
=================  ============================================================================================

Latency per sample: the arrays of one step are read in parallel, the reads of one array one after the other, a
read taking ``t_r + m·t_ADC(b)`` (``m`` columns share an ADC; a SAR conversion takes one cycle per bit, the input
DACs settle within the read pulse); the settling latency is the largest array's read time
(a lower bound of the sum over steps of the largest per-step time, equal when every array is read every step).
Programming: rows one after the other, a row's devices in parallel, one pulse slot per pulse (``pulses · t_w /
in``, a lower bound). Digital work is assumed pipelined behind the reads (no latency).

Area: cells (``2·out·in`` devices at ``cell_area · F²``), ADCs (``ceil(cols/m)`` per tile and sensing side,
area scaled ``2^(b−b_ref)`` from the technology's reference ADC), DACs (one per driven line and tile, ``b`` times
the 1-bit DAC's area),
neurons (the integrator's capacitor at the technology's capacitance density plus the neuron circuit) and the digital
state in SRAM (word bits × SRAM cell).

What is not modelled (say so where it matters): interconnect and buffers between arrays, the data's movement
from memory, leakage, the line capacitances of reads, the half-selected devices of writes, the softmax and the
max-pooling logic of the periphery.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .policies import OPTIMIZER_STATE_WORDS

__all__ = ["Technology", "TechnologyError", "load_technology", "list_technologies", "technology_dir",
           "snapshot", "Workload", "ActivityMeter", "CostReport", "estimate", "measure", "measure_cost",
           "measure_inference", "plot_breakdown", "run_cost", "CATEGORIES", "AREA_CATEGORIES"]

OPTIMIZER_FLOPS = {"momentum": 2, "adam": 10}
"""Arithmetic per weight and step of the periphery optimizers: momentum ``v ← μv + g``, ``w ← w − ηv``; Adam its two
moment updates, the bias corrections, the square root, the division and the step."""

CATEGORIES = ("read", "neurons", "adc", "dac", "write", "digital")
"""Energy terms, in the order of the breakdown."""
AREA_CATEGORIES = ("cells", "adc", "dac", "neurons", "digital")

_UNITS: dict[str, dict[str, float]] = {
    "energy": {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9, "pJ": 1e-12, "fJ": 1e-15, "aJ": 1e-18},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12},
    "voltage": {"V": 1.0, "mV": 1e-3},
    "length": {"m": 1.0, "um": 1e-6, "nm": 1e-9},
    "area": {"m2": 1.0, "mm2": 1e-6, "um2": 1e-12},
    "area_f2": {"F2": 1.0},
    "capacitance_density": {"F/m2": 1.0, "fF/um2": 1e-15 / 1e-12},
    "power": {"W": 1.0, "mW": 1e-3},
    "rate": {"FLOP/s": 1.0, "GFLOP/s": 1e9, "TFLOP/s": 1e12},
    "count": {"1": 1.0, "bits": 1.0, "columns": 1.0},
}

_PARAMS: dict[str, tuple[str, str]] = {
    # name: (kind, meaning)
    "feature_size": ("length", "F, the length unit of cell and SRAM areas"),
    "cell_area": ("area_f2", "area of one device cell (1T1R) in F²"),
    "read_pulse_width": ("time", "read pulse t_r of one crossbar read (a card's read_pulse_width overrides it)"),
    "columns_per_adc": ("count", "columns (lines) that share one ADC, converted one after the other"),
    "adc_bits": ("count", "ADC resolution costed when the simulated periphery has an ideal ADC"),
    "dac_bits": ("count", "DAC resolution costed when the simulated periphery has an ideal DAC"),
    "adc_fom": ("energy", "Walden figure of merit FOM_W = P/(2^ENOB f_s): energy per conversion step"),
    "adc_conversion_time": ("time", "time of one ADC conversion at adc_area_bits bits (1/f_s); a SAR ADC resolves "
                            "one bit per cycle: b bits take b/adc_area_bits of it"),
    "adc_area": ("area", "area of one ADC of adc_area_bits bits (scaled 2^(b - adc_area_bits))"),
    "adc_area_bits": ("count", "resolution of the ADC whose area is adc_area"),
    "dac_energy_per_bit": ("energy", "DAC energy per conversion and bit: E_DAC(b) = b · dac_energy_per_bit (a "
                           "line driver per bit, as ISAAC's 1-bit DACs applying inputs bit by bit)"),
    "dac_area_per_bit": ("area", "DAC area per bit (b · dac_area_per_bit per driven line)"),
    "neuron_area": ("area", "area of one neuron's circuit beside its capacitor"),
    "capacitance_density": ("capacitance_density", "capacitance per area of the neuron's (MIM) capacitor"),
    "write_voltage": ("voltage", "write pulse amplitude for cards that give none (an assumption)"),
    "write_pulse_width": ("time", "write pulse width for cards that give none (an assumption)"),
    "mac_energy": ("energy", "one digital multiply-add of the update (word_bits)"),
    "add_energy": ("energy", "one digital add (word_bits)"),
    "sram_word_energy": ("energy", "one SRAM access of one word (word_bits)"),
    "word_bits": ("count", "bits of one digital number"),
    "sram_cell_area": ("area_f2", "area of one SRAM bit cell in F²"),
    "gpu_power": ("power", "board power of the GPU the comparison is made with"),
    "gpu_peak_flops": ("rate", "that GPU's peak float32 throughput (its energy per FLOP = power / peak)"),
}
_ENTRY_KEYS = {"value", "unit", "source", "verified", "note"}
_HEADER_KEYS = {"name": str, "description": str, "node": str, "gpu": str, "references": list}


class TechnologyError(ValueError):
    """A technology card that cannot be read (names the file, the key and what is allowed)."""


@dataclass(frozen=True)
class Technology:
    """The constants of the cost model, in SI units (a technology card: :func:`load_technology`)."""

    name: str
    feature_size: float
    cell_area: float
    read_pulse_width: float
    columns_per_adc: int
    adc_bits: int
    dac_bits: int
    adc_fom: float
    adc_conversion_time: float
    adc_area: float
    adc_area_bits: int
    dac_energy_per_bit: float
    dac_area_per_bit: float
    neuron_area: float
    capacitance_density: float
    write_voltage: float
    write_pulse_width: float
    mac_energy: float
    add_energy: float
    sram_word_energy: float
    word_bits: int
    sram_cell_area: float
    gpu_power: float
    gpu_peak_flops: float
    gpu: str = "GPU"
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def adc_energy(self, bits: int) -> float:
        """Energy of one conversion [J]: ``FOM_W · 2^bits``."""
        return self.adc_fom * 2.0 ** bits

    def adc_time(self, bits: int) -> float:
        """Time of one conversion [s]: ``adc_conversion_time · bits / adc_area_bits`` (a bit per SAR cycle)."""
        return self.adc_conversion_time * bits / self.adc_area_bits

    def dac_energy(self, bits: int) -> float:
        """Energy of one line drive at ``bits`` [J]: ``bits · dac_energy_per_bit``."""
        return self.dac_energy_per_bit * bits

    def adc_area_of(self, bits: int) -> float:
        return self.adc_area * 2.0 ** (bits - self.adc_area_bits)

    def dac_area_of(self, bits: int) -> float:
        return self.dac_area_per_bit * bits

    @property
    def gpu_energy_per_flop(self) -> float:
        """Board power over peak throughput [J/FLOP]: a lower bound of a GPU's energy per FLOP."""
        return self.gpu_power / self.gpu_peak_flops


def technology_dir() -> Path:
    """Directory of the technology cards: ``technology/`` in the device-card directory
    (``$NEUROMORPH_DEVICE_MODELS`` or ``device_models/``)."""
    from .devices.cards import preset_dir

    return preset_dir() / "technology"


def list_technologies() -> list[str]:
    d = technology_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_technology(name_or_path: str | os.PathLike = "default") -> Technology:
    """A technology card by name (``device_models/technology/<name>.toml``) or path."""
    from .devices.cards import read_toml_file

    s = os.fspath(name_or_path)
    p = Path(s)
    if not (isinstance(name_or_path, os.PathLike) or s.endswith(".toml") or "/" in s or os.sep in s):
        p = technology_dir() / f"{s}.toml"
        if not p.is_file():
            raise TechnologyError(f"unknown technology card {s!r}; available: "
                                  f"{', '.join(list_technologies()) or 'none'} (or give a path to a .toml card)")
    elif not p.is_file():
        raise TechnologyError(f"{s}: no such technology card file")
    expected = "a TOML technology card ([technology] name and [parameters], see device_models/technology/README.md)"
    return technology_from_dict(read_toml_file(p, expected, TechnologyError), where=str(p))


def technology_from_dict(data: dict, where: str = "<technology>") -> Technology:
    """Build a :class:`Technology` from the parsed card, checking every key, unit and value."""
    def err(key: str, value: Any, why: str) -> TechnologyError:
        return TechnologyError(f"{where}: {key} = {value!r}: {why}")

    unknown = set(data) - {"technology", "parameters"}
    if unknown:
        k = sorted(unknown)[0]
        raise err(k, data[k], "unknown table; a technology card has [technology] and [parameters]")
    head = data.get("technology")
    if not isinstance(head, dict) or "name" not in head:
        raise err("technology", head, "a [technology] table with a name is required")
    for k, v in head.items():
        if k not in _HEADER_KEYS:
            raise err(f"technology.{k}", v, f"unknown key; allowed: {', '.join(_HEADER_KEYS)}")
        if not isinstance(v, _HEADER_KEYS[k]):
            raise err(f"technology.{k}", v, f"must be a {_HEADER_KEYS[k].__name__}")
    params = data.get("parameters")
    if not isinstance(params, dict):
        raise err("parameters", params, "a [parameters] table is required")
    kw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, entry in params.items():
        if key not in _PARAMS:
            raise err(f"parameters.{key}", entry, f"unknown parameter; allowed: {', '.join(_PARAMS)}")
        kind, _ = _PARAMS[key]
        if not isinstance(entry, dict) or "value" not in entry or "unit" not in entry:
            raise err(f"parameters.{key}", entry, "write { value = ..., unit = \"...\", source = \"...\" } with unit "
                      f"one of {', '.join(_UNITS[kind])}")
        bad = set(entry) - _ENTRY_KEYS
        if bad:
            raise err(f"parameters.{key}.{sorted(bad)[0]}", entry, f"unknown field; allowed: {', '.join(_ENTRY_KEYS)}")
        if not entry.get("source"):
            raise err(f"parameters.{key}", entry, "every constant needs its source (source = \"...\")")
        unit, value = entry["unit"], entry["value"]
        if unit not in _UNITS[kind]:
            raise err(f"parameters.{key}.unit", unit, f"allowed units: {', '.join(_UNITS[kind])}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise err(f"parameters.{key}.value", value, "a finite number > 0 is required")
        v = float(value) * _UNITS[kind][unit]
        if kind == "count":
            if v != int(v):
                raise err(f"parameters.{key}.value", value, "an integer is required")
            v = int(v)
        kw[key] = v
        sources[key] = str(entry["source"]) + ("" if entry.get("verified", True) else " [not verified]")
    missing = [k for k in _PARAMS if k not in kw]
    if missing:
        raise err("parameters", sorted(params), f"missing: {', '.join(missing)}")
    return Technology(name=head["name"], gpu=head.get("gpu", "GPU"), sources=sources, **kw)


# ---------------------------------------------------------------------------------------------------- counting
_ARRAY_COUNTERS = ("forward_samples", "transpose_samples", "pulses", "reads_refresh", "accumulated", "request_macs")


def snapshot(hw) -> dict[str, dict[str, int]]:
    """The cost counters of every array (Tiki-Taka's fast arrays as ``<name>_fast``) of a
    :class:`~neuromorph.hardware.HardwareNetwork`, for a difference between two moments."""
    out = {}
    for name, arr in _all_arrays(hw).items():
        s = {**arr.stats(), "accumulated": hw.accumulated.get(name, 0), "request_macs": hw.request_macs.get(name, 0)}
        out[name] = {k: int(s[k]) for k in _ARRAY_COUNTERS}
    return out


def _all_arrays(hw) -> dict:
    arrays = dict(hw.arrays())
    arrays.update({f"{k}_fast": a for k, a in hw.fast_arrays.items()})
    return arrays


@dataclass
class Workload:
    """What the chip did besides the arrays' own counters: ``samples`` (training or inference samples),
    ``node_steps`` (Σ over phases of rows × settling steps: neuron updates per node), ``phase_rows`` (Σ over phases
    of rows: steady states converted for the update), ``training`` (the update's
    digital work is counted), ``optimizer`` (the periphery optimizer's kind, or None) and ``optimizer_updates``
    (its per-weight updates). The accumulators of mixed precision and TTv2 are counted per array
    (:attr:`~neuromorph.hardware.HardwareNetwork.accumulated`)."""

    samples: int = 0
    node_steps: int = 0
    phase_rows: int = 0
    training: bool = True
    optimizer: str | None = None
    optimizer_updates: int = 0
    request_terms: int = 2
    """Outer-product terms of the EP request per sample (free/nudged or +β/−β: 2), for the GPU's FLOPs."""


class ActivityMeter:
    """Running mean squares of the inputs the arrays' reads see (``E[(u/x_max)²]``): the network input and each
    state layer at the end of the free phase (a cheap pass over the states once per batch)."""

    def __init__(self) -> None:
        self.sums: list[float] = []
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, state) -> None:
        vals = [float(x.float().square().mean())] + [float(s.float().square().mean()) for s in state]
        self.sums = vals if not self.sums else [a + b for a, b in zip(self.sums, vals)]
        self.n += 1

    def means(self) -> list[float] | None:
        return None if not self.n else [s / self.n for s in self.sums]


# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class CostReport:
    """Energy [J], latency [s] and area [m²] of a measured workload, per array and in total (:func:`estimate`)."""

    device: str
    technology: str
    samples: int
    training: bool
    arrays: list[dict]
    latency: dict[str, float]
    notes: list[str]
    gpu_flops: float
    gpu_energy_J: float
    gpu: str
    tech: Technology | None = field(default=None, repr=False)

    @property
    def energy(self) -> dict[str, float]:
        """Total energy per term [J] over the workload."""
        return {c: sum(a["energy"][c] for a in self.arrays) for c in CATEGORIES}

    @property
    def total_energy(self) -> float:
        return sum(self.energy.values())

    @property
    def energy_per_sample(self) -> float:
        return self.total_energy / max(self.samples, 1)

    @property
    def area(self) -> dict[str, float]:
        return {c: sum(a["area"][c] for a in self.arrays) for c in AREA_CATEGORIES}

    @property
    def total_area(self) -> float:
        return sum(self.area.values())

    @property
    def largest_term(self) -> str:
        e = self.energy
        return max(e, key=e.get)

    def to_dict(self) -> dict:
        n = max(self.samples, 1)
        return {"device": self.device, "technology": self.technology, "samples": self.samples,
                "training": self.training, "energy_per_sample_J": self.energy_per_sample,
                "energy_per_sample_by_term_J": {c: v / n for c, v in self.energy.items()},
                "latency_per_sample_s": self.latency["total"], "latency_by_term_s": dict(self.latency),
                "area_m2": self.total_area, "area_by_term_m2": self.area,
                "largest_term": self.largest_term,
                "gpu_flops_per_sample": self.gpu_flops / n, "gpu_energy_per_sample_J": self.gpu_energy_J / n,
                "gpu": self.gpu,
                "arrays": [{**a, "energy_per_sample_J": {c: v / n for c, v in a["energy"].items()}}
                           for a in self.arrays],
                "notes": list(self.notes)}

    def markdown(self, title: str | None = None) -> str:
        n = max(self.samples, 1)
        what = "training sample" if self.training else "inference"
        lines = [f"### {title or 'Cost'}: per {what} on {self.device} ({self.technology} technology, "
                 f"{self.samples} samples measured)", "",
                 "| array | devices | reads / sample | " + " | ".join(CATEGORIES) + " | total | area |",
                 "|---" * (5 + len(CATEGORIES)) + "|"]
        for a in self.arrays:
            e = {c: a["energy"][c] / n for c in CATEGORIES}
            lines.append(f"| {a['name']} | {a['devices']} | {a['reads'] / n:.4g} | "
                         + " | ".join(_joules(e[c]) for c in CATEGORIES)
                         + f" | {_joules(sum(e.values()))} | {_area(sum(a['area'].values()))} |")
        e = {c: v / n for c, v in self.energy.items()}
        lines.append("| **total** | | | " + " | ".join(f"**{_joules(e[c])}**" for c in CATEGORIES)
                     + f" | **{_joules(sum(e.values()))}** | **{_area(self.total_area)}** |")
        lat = self.latency
        lines += ["", f"Latency per {what}: **{_seconds(lat['total'])}** (settling {_seconds(lat['settle'])}, "
                  f"programming {_seconds(lat['write'])}). Area: "
                  + ", ".join(f"{c} {_area(v)}" for c, v in self.area.items()) + ".",
                  f"Largest term: {self.largest_term} "
                  f"({100 * e[self.largest_term] / max(sum(e.values()), 1e-300):.0f} % of the energy).",
                  f"The same products on a {self.gpu}: {self.gpu_flops / n:.4g} FLOP per {what}, "
                  f"{_joules(self.gpu_energy_J / n)} (an estimate: FLOPs × board power / peak throughput, a lower "
                  "bound of a GPU's energy).", *[f"Note: {t}" for t in self.notes]]
        return "\n".join(lines) + "\n"


def _joules(x: float) -> str:
    return _si(x, "J")


def _seconds(x: float) -> str:
    return _si(x, "s")


def _area(x: float) -> str:
    return f"{x * 1e6:.4g} mm²"


def _si(x: float, unit: str) -> str:
    if x == 0:
        return f"0 {unit}"
    for scale, prefix in ((1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"), (1e-18, "a")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


# ---------------------------------------------------------------------------------------------------- the model
def _bits(value: int | None, default: int) -> tuple[int, bool]:
    return (int(value), False) if value else (default, True)


def _write_pulse(card, g_mean: float, tech: Technology) -> tuple[float, float, str]:
    """Energy [J] and width [s] of one programming pulse of a device of mean conductance ``g_mean``, and where
    they come from."""
    pulses = [(v, t) for v, t in ((card.write_voltage_ltp, card.write_pulse_width_ltp),
                                  (card.write_voltage_ltd, card.write_pulse_width_ltd)) if v and t]
    width = sum(t for _, t in pulses) / len(pulses) if pulses else tech.write_pulse_width
    if card.energy_per_pulse > 0:
        return card.energy_per_pulse, width, "card"
    if pulses:  # NeuroSim AnalogNVM::Write: V² · G · t per pulse, G the device's conductance
        return sum(v * v * g_mean * t for v, t in pulses) / len(pulses), width, "card pulse"
    return tech.write_voltage ** 2 * g_mean * tech.write_pulse_width, width, "technology default pulse"


def _layer_of(name: str) -> int | None:
    """The state layer an array drives (``w3`` → 2; backward, fast and read-out arrays drive none)."""
    if name.startswith("w") and name[1:].isdigit():
        return int(name[1:]) - 1
    return None


def estimate(hw, before: dict, after: dict, work: Workload, tech: Technology,
             activity: list[float] | None = None) -> CostReport:
    """The cost of what ``hw`` (a :class:`~neuromorph.hardware.HardwareNetwork`) did between the counter snapshots
    ``before`` and ``after`` (:func:`snapshot`) with the workload ``work``. ``activity``: mean squares of the input
    and of each state layer (:class:`ActivityMeter`; ``None``: full scale, an upper bound of the read energy)."""
    p, card, net = hw.periphery, hw.card, hw.net
    v_r = p.v_read
    x_max2 = p.x_max ** 2
    t_r = card.read_pulse_width or tech.read_pulse_width
    adc_bits, adc_default = _bits(p.adc_bits, tech.adc_bits)
    dac_bits, dac_default = _bits(p.dac_bits, tech.dac_bits)
    act_bits, _ = _bits(hw.activity_bits, adc_bits)
    e_adc, e_dac = tech.adc_energy(adc_bits), tech.dac_energy(dac_bits)
    m = tech.columns_per_adc
    t_cycle = t_r + m * tech.adc_time(adc_bits)
    n_layers = len(net.state_sizes)
    acts = activity if activity is not None else [1.0] * (n_layers + 1)
    sq = [min(a / x_max2, 1.0) for a in acts]  # E[(u/x_max)²] of the input (0) and of each state layer
    C = hw.tau * hw.g0
    F2 = tech.feature_size ** 2
    notes = []
    if adc_default or dac_default:
        notes.append(f"the simulated periphery has an ideal {'ADC' if adc_default else 'DAC'}"
                     f"{' and DAC' if adc_default and dac_default else ''}: converters costed at the technology's "
                     f"{adc_bits if adc_default else dac_bits} bits")
    if activity is None:
        notes.append("read energy at full-scale inputs (no activity measured): an upper bound")
    rows, settle_times, write_times = [], [], []
    pulse_note = set()
    for name, arr in _all_arrays(hw).items():
        b, a = before.get(name, dict.fromkeys(_ARRAY_COUNTERS, 0)), after[name]
        d = {k: a[k] - b[k] for k in _ARRAY_COUNTERS}
        out, inn = arr.out_features, arr.in_features
        t_in, t_out = arr.n_in_tiles, arr.n_out_tiles
        g_sum = float(arr.array.pos.g.double().sum() + arr.array.neg.g.double().sum())
        g_mean = g_sum / (2 * out * inn)
        layer = _layer_of(name)
        fast = name.endswith("_fast")
        base = name[:-5] if fast else name
        k_in = _layer_of(base.removesuffix("_back"))
        # activity of the forward reads: the array's pre layer (the input for w1; the bias line at 1)
        if fast:  # Tiki-Taka's fast array is read one column at a time (one-hot inputs)
            a_f, a_t = 1.0 / inn, 1.0
        elif base == "w_out":  # its transposed read carries the nudge (y − ŷ): full scale, an upper bound
            a_f, a_t = sq[-1], 1.0
        else:
            pre = sq[k_in] if k_in is not None else 1.0
            bias = 1 if not base.endswith("_back") and _has_bias(hw, k_in) else 0
            a_f = (pre * (inn - bias) + bias) / inn
            post = sq[k_in + 1] if k_in is not None else 1.0
            a_t = post / _pool_area(hw, k_in)
        fwd, tr = d["forward_samples"], d["transpose_samples"]
        e = dict.fromkeys(CATEGORIES, 0.0)
        e["read"] = v_r * v_r * t_r * g_sum * (a_f * fwd + a_t * tr)
        e["adc"] = e_adc * (fwd * t_in * out + tr * t_out * inn)
        e["dac"] = e_dac * (fwd * t_out * inn + tr * t_in * out)
        nodes = net.state_sizes[layer] if layer is not None and not fast and layer < n_layers else 0
        if nodes:
            e["neurons"] = work.node_steps * nodes * C * v_r * v_r * sq[layer + 1]
            e["adc"] += tech.adc_energy(act_bits) * work.phase_rows * nodes
        e_pulse, t_w, src = _write_pulse(card, g_mean, tech)
        pulse_note.add(src)
        e["write"] = d["pulses"] * e_pulse + d["reads_refresh"] * v_r * v_r * t_r * g_mean
        weights = out * inn
        words = 0
        if work.training and not fast:
            # the update requests postᵀ pre computed in the periphery, as counted (zero input columns skipped)
            e["digital"] += d["request_macs"] * tech.mac_energy
            # an accumulator word read, added to and written back per accumulated request
            e["digital"] += d["accumulated"] * (2 * tech.sram_word_energy + tech.add_energy)
            if base in hw.accumulators:
                words += weights
            if work.optimizer:
                n_words = OPTIMIZER_STATE_WORDS[work.optimizer]
                flops = OPTIMIZER_FLOPS[work.optimizer]
                e["digital"] += work.optimizer_updates * weights * (2 * n_words * tech.sram_word_energy
                                                                    + flops * tech.add_energy)
                words += n_words * weights
        # ADCs: ceil(columns / m) per tile on the sensing side of each read direction the array uses
        n_adc = t_in * math.ceil(out / m) + (t_out * math.ceil(inn / m) if tr else 0)
        n_dac = t_out * inn + (t_in * out if tr else 0)
        area = {"cells": 2 * weights * tech.cell_area * F2,
                "adc": n_adc * tech.adc_area_of(adc_bits),
                "dac": n_dac * tech.dac_area_of(dac_bits),
                "neurons": nodes * (tech.neuron_area + C / tech.capacitance_density),
                "digital": words * tech.word_bits * tech.sram_cell_area * F2}
        n = max(work.samples, 1)
        settle_times.append((fwd + tr) / n * t_cycle)
        write_times.append(d["pulses"] * t_w / inn / n)
        rows.append({"name": name, "shape": [out, inn], "devices": 2 * weights, "reads": fwd + tr,
                     "forward_reads": fwd, "transpose_reads": tr, "pulses": d["pulses"],
                     "adc_conversions": fwd * t_in * out + tr * t_out * inn, "request_macs": d["request_macs"],
                     "energy": e, "area": area,
                     "settle_time_s": settle_times[-1], "write_time_s": write_times[-1],
                     "activity": [a_f, a_t], "energy_per_pulse_J": e_pulse, "pulse_source": src})
    if "technology default pulse" in pulse_note:
        notes.append(f"{card.name} gives no write pulse: write energy from the technology's default pulse "
                     f"({tech.write_voltage:g} V, {tech.write_pulse_width:g} s), an assumption")
    latency = {"settle": max(settle_times, default=0.0), "write": max(write_times, default=0.0) if work.training
               else 0.0}
    latency["total"] = latency["settle"] + latency["write"]
    # a GPU does every product densely: each read's 2·out·in FLOPs and the request's 2·rows·out·in (one row per
    # sample and term)
    flops = sum(2.0 * r["shape"][0] * r["shape"][1] * r["reads"] for r in rows if not r["name"].endswith("_fast"))
    if work.training:
        flops += sum(2.0 * work.request_terms * r["shape"][0] * r["shape"][1] * work.samples for r in rows
                     if not r["name"].endswith("_fast"))
    return CostReport(device=card.name, technology=tech.name, samples=work.samples, training=work.training,
                      arrays=rows, latency=latency, notes=notes, gpu_flops=flops,
                      gpu_energy_J=flops * tech.gpu_energy_per_flop, gpu=tech.gpu, tech=tech)


def _has_bias(hw, k: int | None) -> bool:
    return k is not None and bool(getattr(hw.net.synapses[k], "bias", False))


def _pool_area(hw, k: int | None) -> int:
    """A conv synapse's transposed read sees the unpooled post (one nonzero of ``pool²``)."""
    if k is None:
        return 1
    pool = getattr(hw.net.synapses[k], "pool", 1) or 1
    return pool * pool


# ---------------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def measure_inference(sub, x: torch.Tensor) -> CostReport:
    """The cost of inferring ``x`` (one free phase on the hardware of ``sub``, a
    :class:`~neuromorph.hil.HardwareSubstrate`, and the read-out): counted from the arrays' counters."""
    hw = sub.hw
    before = snapshot(hw)
    res = sub._free(x)
    hw.logits(res.state)
    work = Workload(samples=x.shape[0], node_steps=x.shape[0] * res.settle.n_steps, training=False)
    meter = ActivityMeter()
    meter.add(x, res.state)
    return estimate(hw, before, snapshot(hw), work, sub.technology, meter.means())


def measure(cfg, batches: int = 2, *, card=None, dataset=None, log=print, infer_batch: int | None = None) -> dict:
    """Train ``batches`` batches of ``cfg`` on its simulated hardware and infer one test batch (``infer_batch``
    images, default ``train.eval_batch_size``), and return the cost reports ``{"training": CostReport,
    "inference": CostReport}`` (per sample: :meth:`CostReport.to_dict`)."""
    from dataclasses import replace

    from .hil import HardwareTrainer

    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches = {batches!r}: an integer >= 1 is required")
    cfg = replace(cfg, output=replace(cfg.output, checkpoint=False), train=replace(cfg.train, progress=False))
    tr = HardwareTrainer(cfg, dataset=dataset, card=card)
    tr.train_epoch(0, max_batches=batches, evaluate=False)
    x, _ = tr.split("test")
    xb = x[:infer_batch or cfg.train.eval_batch_size].to(tr.net.device, tr.net.dtype)
    return {"training": tr.sub.last_cost, "inference": measure_inference(tr.sub, xb)}


measure_cost = measure


def _board_power() -> tuple[float | None, str]:
    """The GPU's board power limit [W] from ``nvidia-smi`` (None when it cannot be read)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=power.limit", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        return float(out[0]), "nvidia-smi power.limit"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None, "unavailable"


def gpu_measurement(cfg, batches: int, tech: Technology, dataset=None) -> dict | None:
    """The same network's ideal training on this machine's GPU: the time of ``batches`` batches (after one batch
    of warm-up) times the board power (``nvidia-smi``'s power limit, else the technology card's), per sample.
    ``None`` without a CUDA device."""
    import time
    from dataclasses import replace

    from .train import Trainer

    if not torch.cuda.is_available():
        return None
    c = replace(cfg, train=replace(cfg.train, device="cuda", progress=False),
                output=replace(cfg.output, checkpoint=False))
    tr = Trainer(c, dataset=dataset)
    tr.train_epoch(0, max_batches=1, evaluate=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    m = tr.train_epoch(0, max_batches=batches, evaluate=False)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = max(1, round(m["samples_per_s"] * m["train_time_s"]))
    power, src = _board_power()
    if power is None:
        power, src = tech.gpu_power, f"the technology card's {tech.gpu}"
    return {"gpu": torch.cuda.get_device_name(), "time_per_sample_s": dt / n, "board_power_W": power,
            "power_source": src, "energy_per_sample_J": dt * power / n}
"""The public name of :func:`measure` (``neuromorph.measure_cost``)."""


def plot_breakdown(reports: dict[str, CostReport], path: str | Path, title: str = "") -> Path:
    """Stacked bars of the energy per sample by term (read, neurons, ADC, DAC, write, digital), one bar per report
    (log-free, in the unit that suits the largest bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(reports)
    per = {c: [reports[k].energy[c] / max(reports[k].samples, 1) for k in labels] for c in CATEGORIES}
    top = max(sum(per[c][i] for c in CATEGORIES) for i in range(len(labels))) or 1.0
    scale, unit = next(((s, u) for s, u in ((1, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"))
                        if top >= s), (1e-15, "fJ"))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2.5), 4.0))
    bottom = [0.0] * len(labels)
    colors = dict(zip(CATEGORIES, ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd")))
    for c in CATEGORIES:
        vals = [v / scale for v in per[c]]
        ax.bar(labels, vals, bottom=bottom, label=c, color=colors[c])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel(f"energy per sample [{unit}]")
    ax.set_title(title or "energy per sample by term")
    ax.legend(fontsize=8, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_cost(cfg, out: str | Path, batches: int = 2, *, card=None, log=print) -> dict:
    """``neuromorph cost``: measure (:func:`measure`), write ``cost.json``, ``cost.md`` and ``cost_breakdown.png``
    to ``out``, and return the JSON summary."""
    import json

    from .runio import json_safe

    reports = measure(cfg, batches, card=card, log=log)
    gpu = gpu_measurement(cfg, batches, reports["training"].tech)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": cfg.name, **{k: r.to_dict() for k, r in reports.items()}, "gpu_measured": gpu}
    (out / "cost.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))
    md = (f"# Cost of {cfg.name} on {reports['training'].device}\n\n"
          + reports["training"].markdown("Training") + "\n" + reports["inference"].markdown("Inference")
          + ("\nNo GPU here: the GPU figures are the FLOP estimates above.\n" if gpu is None else
             f"\nMeasured on this machine's {gpu['gpu']}: {gpu['time_per_sample_s']:.3g} s per training sample of "
             f"the ideal reference x {gpu['board_power_W']:.0f} W ({gpu['power_source']}) = "
             f"{gpu['energy_per_sample_J']:.3g} J per training sample.\n"))
    (out / "cost.md").write_text(md)
    plot_breakdown({"training": reports["training"], "inference": reports["inference"]}, out / "cost_breakdown.png",
                   title=f"{cfg.name} on {reports['training'].device}: energy per sample")
    if log:
        log(md + f"\nwritten: {out / 'cost.md'}, {out / 'cost.json'}, {out / 'cost_breakdown.png'}")
    return summary
