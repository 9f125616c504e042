"""Device cards: the parameters of one memristive device technology, with units and sources.

A card is a TOML file with two tables (see ``device_models/README.md``)::

    [device]
    name = "Ag:a-Si"
    model = "neurosim"
    citation = "S. H. Jo et al., Nano Lett. 10, 1297 (2010)"
    source = "NeuroSim MLP_NeuroSim_V3.0, documents/Cell.cpp (RealDevice)"

    [parameters]
    g_max = { value = 3.8462e-8, unit = "S", source = "Cell.cpp: maxConductance = 3.8462e-8" }
    max_pulses = { value = 97, unit = "levels" }
    ...

Every number is an inline table with ``value`` and ``unit`` (and optionally ``source``, ``note`` and
``verified = false`` for a value that could not be checked against its public source). Booleans are bare.
:func:`load_card` converts the units (see :mod:`neuromorph.devices.units`) and returns a frozen
:class:`DeviceCard`; anything wrong (a missing unit, an unknown key, G_min >= G_max, a negative level count, a
wrong type, a parameter that does not belong to the card's model, a value outside its physical range, e.g. a
conductance outside [1 pS, 1 S], see :func:`parameter_range`) raises :class:`DeviceCardError` naming the file, the
key, the value and what is allowed.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .units import KIND_DOC, UNITS, canonical_unit, convert

__all__ = ["DeviceCard", "DeviceCardError", "MODELS", "PARAMETERS", "load_card", "list_presets", "preset_dir",
           "card_to_toml", "dump_card", "STEP_MODELS", "parameter_range", "MULT_NOISE_DEFAULT"]

MODELS = ("ideal", "constant_step", "linear_step", "soft_bounds", "exp_step", "neurosim")
STEP_MODELS = ("constant_step", "linear_step", "soft_bounds", "exp_step")
_ALL = MODELS
_STEP = STEP_MODELS
_NOT_NEUROSIM = ("ideal",) + STEP_MODELS


class DeviceCardError(ValueError):
    """A device card is malformed; the message names the file, the key, the value and what is allowed."""


@dataclass(frozen=True)
class _Spec:
    kind: str
    models: tuple[str, ...]
    doc: str
    nonneg: bool = True


#: Every numeric / boolean parameter a card may hold: kind (fixes the unit), models it applies to, meaning.
PARAMETERS: dict[str, _Spec] = {
    # conductance range (all models)
    "g_min": _Spec("conductance", _ALL, "minimum conductance G_min (mean over devices)"),
    "g_max": _Spec("conductance", _ALL, "maximum conductance G_max (mean over devices)"),
    # aihwkit pulsed-device parameters (PulsedDevice, same semantics)
    "w_min": _Spec("dimensionless", _STEP, "aihwkit weight bound w_min (normalised units, <= 0); with w_max it "
                   "fixes the mapping g = g_ref + w (g_max - g_min)/(w_max - w_min)", nonneg=False),
    "w_max": _Spec("dimensionless", _STEP, "aihwkit weight bound w_max (normalised units, >= 0)"),
    "dw_min": _Spec("range_fraction", _STEP + ("ideal",), "mean step per pulse, as a fraction of the range"),
    "up_down": _Spec("dimensionless", _STEP, "systematic up/down step bias, in units of dw_min (aihwkit): "
                     ">0 makes down steps smaller, <0 up steps smaller", nonneg=False),
    "dw_min_dtod": _Spec("dimensionless", _STEP, "device-to-device std of the step, relative to dw_min"),
    "dw_min_std": _Spec("dimensionless", _STEP, "cycle-to-cycle std of each step, relative to the step"),
    "up_down_dtod": _Spec("dimensionless", _STEP, "device-to-device std of the up/down bias, relative to dw_min"),
    "w_max_dtod": _Spec("dimensionless", _STEP, "device-to-device std of the upper bound, relative to |w_max|"),
    "w_min_dtod": _Spec("dimensionless", _STEP, "device-to-device std of the lower bound, relative to |w_min|"),
    "write_noise_std": _Spec("dimensionless", ("linear_step", "soft_bounds", "exp_step"),
                             "write noise std on the apparent conductance after an update, in units of dw_min"),
    "mult_noise": _Spec("bool", ("linear_step", "soft_bounds"), "multiplicative (true: relative to the state-"
                        "dependent step) or additive (false: relative to the nominal step) cycle-to-cycle noise; "
                        "default true, as in aihwkit"),
    "gamma_up": _Spec("dimensionless", ("linear_step", "exp_step"), "linear step: relative step decrease at the "
                      "upper bound; exp step: exponent of the up direction", nonneg=False),
    "gamma_down": _Spec("dimensionless", ("linear_step", "exp_step"), "as gamma_up, down direction", nonneg=False),
    "gamma_up_dtod": _Spec("dimensionless", ("linear_step",), "device-to-device std of gamma_up (absolute)"),
    "gamma_down_dtod": _Spec("dimensionless", ("linear_step",), "device-to-device std of gamma_down (absolute)"),
    "mean_bound_reference": _Spec("bool", ("linear_step",), "slopes referenced to the mean bounds (true) or to "
                                  "each device's bounds (false)"),
    "a": _Spec("dimensionless", ("exp_step",), "exp step global slope a_es", nonneg=False),
    "b": _Spec("dimensionless", ("exp_step",), "exp step global offset b_es", nonneg=False),
    "A_up": _Spec("dimensionless", ("exp_step",), "exp step factor A for the up direction", nonneg=False),
    "A_down": _Spec("dimensionless", ("exp_step",), "exp step factor A for the down direction", nonneg=False),
    "dw_min_std_add": _Spec("range_fraction", ("exp_step",), "exp step 'complex noise' additive term"),
    "dw_min_std_slope": _Spec("dimensionless", ("exp_step",), "exp step 'complex noise' term proportional to |w|"),
    # NeuroSim nonlinear model
    "nl_ltp": _Spec("dimensionless", ("neurosim",), "NeuroSim nonlinearity label of potentiation (LTP)",
                    nonneg=False),
    "nl_ltd": _Spec("dimensionless", ("neurosim",), "NeuroSim nonlinearity label of depression (LTD); a sign "
                    "opposite to nl_ltp means LTP and LTD curves are mirror images", nonneg=False),
    "max_pulses": _Spec("count", ("neurosim",), "number of pulses (levels) from G_min to G_max (LTP)"),
    "max_pulses_ltd": _Spec("count", ("neurosim",), "number of pulses from G_max to G_min (LTD); 0 = max_pulses"),
    "c2c_sigma": _Spec("range_fraction", ("neurosim", "ideal"), "cycle-to-cycle sigma of a write, relative to the "
                       "range, times sqrt(number of pulses) (NeuroSim)"),
    "nl_dtod": _Spec("dimensionless", ("neurosim",), "device-to-device std of the NL labels (absolute, NeuroSim "
                     "sigmaDtoD)"),
    "g_min_dtod": _Spec("dimensionless", ("neurosim", "ideal"), "device-to-device std of G_min, relative to G_min"),
    "g_max_dtod": _Spec("dimensionless", ("neurosim", "ideal"), "device-to-device std of G_max, relative to G_max"),
    # generic non-idealities
    "read_noise_std": _Spec("gmax_fraction", _ALL, "read noise std per read, relative to G_max"),
    "stuck_at_min_frac": _Spec("dimensionless", _ALL, "fraction of devices stuck at their G_min"),
    "stuck_at_max_frac": _Spec("dimensionless", _ALL, "fraction of devices stuck at their G_max"),
    "drift_nu": _Spec("dimensionless", _ALL, "mean drift exponent nu of G(t) = G(t0) (t/t0)^-nu"),
    "drift_nu_std": _Spec("dimensionless", _ALL, "device-to-device std of nu (absolute)"),
    "drift_t0": _Spec("time", _ALL, "drift reference time t0"),
    # energy and operating point
    "energy_per_pulse": _Spec("energy", _ALL, "energy per programming pulse per device"),
    "energy_per_read": _Spec("energy", _ALL, "energy per read per device"),
    "write_voltage_ltp": _Spec("voltage", _ALL, "write pulse amplitude, potentiation", nonneg=False),
    "write_voltage_ltd": _Spec("voltage", _ALL, "write pulse amplitude, depression", nonneg=False),
    "write_pulse_width_ltp": _Spec("time", _ALL, "write pulse width, potentiation"),
    "write_pulse_width_ltd": _Spec("time", _ALL, "write pulse width, depression"),
    "read_voltage": _Spec("voltage", _ALL, "read voltage", nonneg=False),
    "read_pulse_width": _Spec("time", _ALL, "read pulse width"),
}

#: Allowed (physical) range of every numeric parameter, in the internal units (S, s, J, V, fractions, levels):
#: generous bounds outside which a value is a typo or a unit mistake (1e300 S), not a device, and would overflow
#: the float32 arithmetic of the simulator. Per kind, then per parameter (overrides).
_KIND_RANGE: dict[str, tuple[float, float]] = {
    "conductance": (0.0, 1.0),          # up to 1 S (a 1 ohm device); g_max >= 1 pS (below)
    "range_fraction": (0.0, 1.0),       # at most the whole conductance range
    "gmax_fraction": (0.0, 1.0),        # at most G_max
    "count": (0, 1_000_000),            # levels / pulses
    "time": (0.0, 1e9),                 # up to ~30 years
    "energy": (0.0, 1.0),               # up to 1 J per pulse / read
    "voltage": (-1000.0, 1000.0),       # up to 1 kV
    "dimensionless": (-1000.0, 1000.0),
}
_RELATIVE_STD = (0.0, 100.0)
_PARAM_RANGE: dict[str, tuple[float, float]] = {
    "g_max": (1e-12, 1.0),              # 1 pS (1 Tohm) ... 1 S (1 ohm)
    "drift_t0": (1e-12, 1e9),
    "w_min": (-100.0, 100.0),
    "w_max": (-100.0, 100.0),
    "gamma_up": (-100.0, 100.0),
    "gamma_down": (-100.0, 100.0),
    "nl_ltp": (-9.0, 9.0),              # NeuroSim's Nonlinearity-NormA table
    "nl_ltd": (-9.0, 9.0),
    "nl_dtod": (0.0, 9.0),
    "drift_nu": (0.0, 10.0),
    "drift_nu_std": (0.0, 10.0),
    "stuck_at_min_frac": (0.0, 1.0),
    "stuck_at_max_frac": (0.0, 1.0),
    **{k: _RELATIVE_STD for k in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_max_dtod", "w_min_dtod",
                                  "gamma_up_dtod", "gamma_down_dtod", "g_min_dtod", "g_max_dtod",
                                  "dw_min_std_slope")},
}
#: exp_step: |gamma| (2 |a| + |b|) bounds the exponent of exp(gamma z) (|z| <= 2 |a| + |b|); e^80 stays finite in
#: float32 (max ~ e^88.7) with A s in front.
_EXP_STEP_MAX_EXPONENT = 80.0


def parameter_range(key: str) -> tuple[float, float]:
    """The allowed ``(low, high)`` of a numeric parameter, in its internal (canonical) unit."""
    spec = PARAMETERS[key]
    lo, hi = _PARAM_RANGE.get(key, _KIND_RANGE[spec.kind])
    if spec.nonneg:
        lo = max(lo, 0)
    return lo, hi


def _range_text(key: str) -> str:
    spec = PARAMETERS[key]
    lo, hi = parameter_range(key)
    unit = canonical_unit(spec.kind)
    if spec.kind == "conductance":
        return (f"[{lo:g} S, {hi:g} S] (a conductance between " + ("0" if lo == 0 else "1 pS = 1 Tohm")
                + " and 1 S = 1 ohm)")
    if spec.kind == "count":
        return f"[{lo}, {hi}] {unit}"
    suffix = {"dimensionless": "", "range_fraction": " (fraction of g_max - g_min)",
              "gmax_fraction": " (fraction of g_max)"}.get(spec.kind, f" {unit}")
    if spec.kind in ("time", "energy", "voltage"):
        return f"[{lo:g} {unit}, {hi:g} {unit}]"
    return f"[{lo:g}, {hi:g}]{suffix}"


_DEVICE_KEYS = {"name": str, "model": str, "description": str, "citation": str, "source": str, "notes": str,
                "references": list}
_PARAM_ENTRY_KEYS = {"value", "unit", "source", "note", "verified"}
#: ``mult_noise`` of a card that does not set it: aihwkit's default, ``True`` for ``LinearStepDevice`` and
#: ``SoftBoundsDevice`` (IBM/aihwkit src/aihwkit/simulator/configs/devices.py at b15868671b33, lines 483 and 549:
#: ``mult_noise: bool = True``, "Whether to use multiplicative noise instead of additive cycle-to-cycle noise").
#: The other models have no such switch (False, unused).
MULT_NOISE_DEFAULT: dict[str, bool] = {"linear_step": True, "soft_bounds": True}
_NON_IDEALITIES = ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_max_dtod", "w_min_dtod", "write_noise_std",
                   "gamma_up_dtod", "gamma_down_dtod", "dw_min_std_add", "dw_min_std_slope", "c2c_sigma", "nl_dtod",
                   "g_min_dtod", "g_max_dtod", "read_noise_std", "stuck_at_min_frac", "stuck_at_max_frac",
                   "drift_nu", "drift_nu_std")


@dataclass(frozen=True)
class DeviceCard:
    """All parameters of one device technology, in SI units (conductances in S, times in s, energies in J).

    Semantics follow IBM aihwkit for the step models (``dw_min`` is stored as a fraction of the range
    ``g_max - g_min``; the aihwkit weight ``w`` maps to ``g = g_ref + w (g_max - g_min)/(w_max - w_min)``,
    ``g_ref = g_min - w_min (g_max - g_min)/(w_max - w_min)``) and NeuroSim for the ``neurosim`` model. A value of
    0 switches a non-ideality off. Use :func:`dataclasses.replace` for variants and :meth:`ideal` to switch every
    non-ideality off. ``n_states`` is derived (see the property).
    """

    name: str
    model: str
    g_min: float
    g_max: float
    description: str = ""
    citation: str = ""
    source: str = ""
    references: tuple[str, ...] = ()
    notes: str = ""
    # aihwkit step models
    w_min: float = -1.0
    w_max: float = 1.0
    dw_min: float = 0.0
    up_down: float = 0.0
    dw_min_dtod: float = 0.0
    dw_min_std: float = 0.0
    up_down_dtod: float = 0.0
    w_max_dtod: float = 0.0
    w_min_dtod: float = 0.0
    write_noise_std: float = 0.0
    #: None (not given): the model's default, :data:`MULT_NOISE_DEFAULT` (aihwkit: True for linear_step and
    #: soft_bounds); resolved to a bool when the card is built
    mult_noise: bool | None = None
    gamma_up: float = 0.0
    gamma_down: float = 0.0
    gamma_up_dtod: float = 0.0
    gamma_down_dtod: float = 0.0
    mean_bound_reference: bool = True
    a: float = 0.0
    b: float = 0.0
    A_up: float = 0.0
    A_down: float = 0.0
    dw_min_std_add: float = 0.0
    dw_min_std_slope: float = 0.0
    # NeuroSim
    nl_ltp: float = 0.0
    nl_ltd: float = 0.0
    max_pulses: int = 0
    max_pulses_ltd: int = 0
    c2c_sigma: float = 0.0
    nl_dtod: float = 0.0
    g_min_dtod: float = 0.0
    g_max_dtod: float = 0.0
    # generic non-idealities
    read_noise_std: float = 0.0
    stuck_at_min_frac: float = 0.0
    stuck_at_max_frac: float = 0.0
    drift_nu: float = 0.0
    drift_nu_std: float = 0.0
    drift_t0: float = 1.0
    # energy, operating point
    energy_per_pulse: float = 0.0
    energy_per_read: float = 0.0
    write_voltage_ltp: float = 0.0
    write_voltage_ltd: float = 0.0
    write_pulse_width_ltp: float = 0.0
    write_pulse_width_ltd: float = 0.0
    read_voltage: float = 0.0
    read_pulse_width: float = 0.0
    #: per-parameter provenance: ((key, "source text [UNVERIFIED: ...]"), ...)
    provenance: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.mult_noise is None:
            object.__setattr__(self, "mult_noise", MULT_NOISE_DEFAULT.get(self.model, False))
        _validate(self, where="DeviceCard")

    # ------------------------------------------------------------------ derived
    @property
    def n_states(self) -> int:
        """Number of states: NeuroSim ``max_pulses``; step models the nominal ``round(1/dw_min)`` (aihwkit's
        granularity: pulses from bound to bound at the mean step); 0 for the continuous ideal device."""
        if self.model == "neurosim":
            return int(self.max_pulses)
        if self.model in STEP_MODELS:
            return int(round(1.0 / self.dw_min))
        return 0

    @property
    def max_pulses_down(self) -> int:
        """NeuroSim LTD levels (``max_pulses_ltd`` or, when 0, ``max_pulses``)."""
        return int(self.max_pulses_ltd or self.max_pulses)

    @property
    def g_range(self) -> float:
        return self.g_max - self.g_min

    @property
    def on_off_ratio(self) -> float:
        return self.g_max / self.g_min if self.g_min > 0 else math.inf

    @property
    def dg_nominal(self) -> float:
        """Nominal smallest conductance step [S]: range / levels (NeuroSim) or dw_min * range."""
        if self.model == "neurosim":
            return self.g_range / self.max_pulses
        return self.dw_min * self.g_range

    @property
    def pulse_energy(self) -> float:
        """Energy of one programming pulse on one device [J]: ``energy_per_pulse`` when the card gives it, else
        NeuroSim's estimate ``V² · G · t`` at the mid-range conductance ``(g_min + g_max)/2``, averaged over the
        potentiation and depression pulses the card specifies (``write_voltage_*``, ``write_pulse_width_*``);
        0 when the card has neither."""
        if self.energy_per_pulse > 0:
            return self.energy_per_pulse
        g_mid = 0.5 * (self.g_min + self.g_max)
        e = [v * v * g_mid * t for v, t in ((self.write_voltage_ltp, self.write_pulse_width_ltp),
                                             (self.write_voltage_ltd, self.write_pulse_width_ltd)) if v and t]
        return sum(e) / len(e) if e else 0.0

    @property
    def w_range(self) -> float:
        return self.w_max - self.w_min

    @property
    def g_ref(self) -> float:
        """Conductance of aihwkit's w = 0 (the symmetry point of the step models) [S]."""
        return self.g_min - self.w_min * self.g_range / self.w_range

    def ideal(self) -> DeviceCard:
        """The same device with every stochastic / defect non-ideality off (d2d and c2c variability, write and
        read noise, stuck devices, drift). The deterministic response (levels, nonlinearity, up/down asymmetry)
        is the device itself and is kept."""
        return replace(self, **{k: 0.0 for k in _NON_IDEALITIES})

    def parameter_items(self) -> list[tuple[str, Any, str, str]]:
        """(key, value, canonical unit, meaning) for the parameters that apply to this card's model."""
        out = []
        for key, spec in PARAMETERS.items():
            if self.model not in spec.models:
                continue
            v = getattr(self, key)
            unit = "" if spec.kind == "bool" else canonical_unit(spec.kind)
            out.append((key, v, unit, spec.doc))
        return out

    def provenance_of(self, key: str) -> str:
        return dict(self.provenance).get(key, "")


# ---------------------------------------------------------------------- validation
def _err(where: str, key: str, value: Any, allowed: str) -> DeviceCardError:
    return DeviceCardError(f"{where}: key '{key}' = {value!r}: {allowed}")


def _validate(c: DeviceCard, where: str) -> None:
    if c.model not in MODELS:
        raise _err(where, "model", c.model, f"allowed models: {', '.join(MODELS)}")
    if not isinstance(c.name, str) or not c.name:
        raise _err(where, "name", c.name, "a non-empty string is required")
    for f in fields(c):
        v = getattr(c, f.name)
        spec = PARAMETERS.get(f.name)
        if spec is None:
            continue
        if spec.kind == "bool":
            if not isinstance(v, bool):
                raise _err(where, f.name, v, "a boolean (true/false) is required")
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _err(where, f.name, v, f"a number is required ({KIND_DOC[spec.kind]})")
        if spec.kind == "count" and int(v) != v:
            raise _err(where, f.name, v, "an integer count is required")
        if not math.isfinite(v):
            raise _err(where, f.name, v, "a finite number is required")
        if spec.nonneg and v < 0:
            raise _err(where, f.name, v, "must be >= 0")
        lo, hi = parameter_range(f.name)
        if not lo <= v <= hi:
            raise _err(where, f.name, v, f"outside the allowed range {_range_text(f.name)}; check the value and "
                       "its unit")
    if not c.g_max > 0:
        raise _err(where, "g_max", c.g_max, "G_max must be > 0 S")
    if not c.g_min < c.g_max:
        raise _err(where, "g_min", c.g_min, f"G_min must be < G_max = {c.g_max:g} S")
    for k in ("stuck_at_min_frac", "stuck_at_max_frac"):
        if getattr(c, k) >= 1:
            raise _err(where, k, getattr(c, k), "a fraction in [0, 1) is required")
    if c.stuck_at_min_frac + c.stuck_at_max_frac >= 1:
        raise _err(where, "stuck_at_max_frac", c.stuck_at_max_frac, "stuck_at_min_frac + stuck_at_max_frac < 1")
    if not c.drift_t0 > 0:
        raise _err(where, "drift_t0", c.drift_t0, "t0 must be > 0 s")
    if c.model in STEP_MODELS:
        if not c.dw_min > 0:
            raise _err(where, "dw_min", c.dw_min, f"model '{c.model}' needs a step dw_min > 0")
        if not (c.w_min <= 0 <= c.w_max and c.w_min < c.w_max):
            raise _err(where, "w_min", c.w_min, f"need w_min <= 0 <= w_max and w_min < w_max (w_max = {c.w_max})")
        if c.model == "soft_bounds" and not (c.w_min < 0 < c.w_max):
            raise _err(where, "w_min", c.w_min, "soft bounds need w_min < 0 < w_max (steps scale with 1 - w/bound)")
        if c.model == "linear_step" and (c.gamma_up < 0 or c.gamma_down < 0):
            raise _err(where, "gamma_up", (c.gamma_up, c.gamma_down), "linear step slopes gamma must be >= 0")
        if abs(c.up_down) >= 1:
            raise _err(where, "up_down", c.up_down, "|up_down| < 1 (relative to dw_min)")
        if c.model == "exp_step":
            ex = max(abs(c.gamma_up), abs(c.gamma_down)) * (2 * abs(c.a) + abs(c.b))
            if ex > _EXP_STEP_MAX_EXPONENT:
                raise _err(where, "gamma_up", (c.gamma_up, c.gamma_down),
                           f"exp_step needs max(|gamma_up|, |gamma_down|) * (2 |a| + |b|) <= "
                           f"{_EXP_STEP_MAX_EXPONENT:g} (here {ex:g} with a = {c.a:g}, b = {c.b:g}): a larger "
                           "exponent overflows exp(gamma z)")
    elif c.model == "neurosim":
        if not c.max_pulses >= 1:
            raise _err(where, "max_pulses", c.max_pulses, "the neurosim model needs max_pulses >= 1 (levels)")
        for k in ("nl_ltp", "nl_ltd"):
            if abs(getattr(c, k)) > 9:
                raise _err(where, k, getattr(c, k), "NeuroSim labels are in [-9, 9] (its Nonlinearity-NormA table)")
    elif c.model == "ideal":
        if not c.dw_min > 0:
            raise _err(where, "dw_min", c.dw_min, "the ideal model needs the pulse size dw_min > 0 (fraction)")


# ---------------------------------------------------------------------- loading
def preset_dir() -> Path:
    """Directory of the preset cards: $NEUROMORPH_DEVICE_MODELS, else ``device_models/`` at the repository root."""
    env = os.environ.get("NEUROMORPH_DEVICE_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "device_models"


def list_presets() -> list[str]:
    """Names of the preset cards (``device_models/<name>.toml``), sorted."""
    d = preset_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def _resolve(path_or_name: str | os.PathLike) -> Path:
    s = str(path_or_name)
    p = Path(s)
    if isinstance(path_or_name, os.PathLike) or s.endswith(".toml") or os.sep in s or "/" in s:
        if not p.is_file():
            raise DeviceCardError(f"{s}: no such device card file")
        return p
    cand = preset_dir() / f"{s}.toml"
    if not cand.is_file():
        raise DeviceCardError(f"unknown device preset '{s}'; available presets: {', '.join(list_presets())} "
                              "(or give a path to a .toml card)")
    return cand


def load_card(path_or_name: str | os.PathLike) -> DeviceCard:
    """Load a card: a preset name (``device_models/<name>.toml``) or a path to a user's TOML card."""
    path = _resolve(path_or_name)
    return card_from_dict(read_toml_file(path, _CARD_EXPECTED, DeviceCardError), where=str(path))


def read_toml_file(path: Path, expected: str, error: type[ValueError] = ValueError) -> dict:
    """The parsed TOML of ``path`` (:func:`read_text_file`); invalid TOML raises ``error`` naming the file, the
    parser's message and ``expected``."""
    text = read_text_file(path, expected, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}; expected {expected}") from None


_CARD_EXPECTED = ("a TOML device card (UTF-8 text with a [device] table (name, model) and a [parameters] table, "
                  "see device_models/README.md)")


def read_text_file(path: Path, expected: str, error: type[ValueError] = ValueError) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); a binary or non-UTF-8 file, or one that cannot be read,
    raises ``error`` naming the file and ``expected`` (what the file should be)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e}); expected {expected}") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{path}: a binary file (NUL byte at offset {nul}), not text; expected {expected}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); expected "
                    f"{expected}") from None


def card_from_dict(data: dict, where: str = "<card>") -> DeviceCard:
    """Build a card from the parsed TOML structure (``[device]`` + ``[parameters]``), validating units and keys."""
    unknown = set(data) - {"device", "parameters"}
    if unknown:
        k = sorted(unknown)[0]
        raise _err(where, k, data[k], "unknown table/key; a card has only [device] and [parameters]")
    dev = data.get("device")
    if not isinstance(dev, dict):
        raise _err(where, "device", dev, "a [device] table with name and model is required")
    for k, v in dev.items():
        if k not in _DEVICE_KEYS:
            raise _err(where, f"device.{k}", v, f"unknown key; allowed in [device]: {', '.join(_DEVICE_KEYS)}")
        if not isinstance(v, _DEVICE_KEYS[k]):
            raise _err(where, f"device.{k}", v, f"must be a {_DEVICE_KEYS[k].__name__}")
    for k in ("name", "model"):
        if k not in dev:
            raise _err(where, f"device.{k}", None, "required")
    model = dev["model"]
    if model not in MODELS:
        raise _err(where, "device.model", model, f"allowed models: {', '.join(MODELS)}")
    refs = dev.get("references", [])
    if not all(isinstance(r, str) for r in refs):
        raise _err(where, "device.references", refs, "a list of strings")
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise _err(where, "parameters", params, "a [parameters] table")
    for req in ("g_min", "g_max"):
        if req not in params:
            raise _err(where, f"parameters.{req}", None,
                       "required (with its unit, e.g. { value = 1e-6, unit = \"S\" })")

    kw: dict[str, Any] = {}
    prov: list[tuple[str, str]] = []
    # w_min/w_max first: the unit 'w' of dw_min needs them
    order = sorted(params, key=lambda k: (k not in ("w_min", "w_max"), k))
    for key in order:
        entry = params[key]
        spec = PARAMETERS.get(key)
        if spec is None:
            raise _err(where, f"parameters.{key}", entry, "unknown parameter; see device_models/README.md for the "
                       "list of keys")
        if model not in spec.models:
            raise _err(where, f"parameters.{key}", entry, f"does not apply to model '{model}' (applies to: "
                       f"{', '.join(spec.models)})")
        if spec.kind == "bool":
            if not isinstance(entry, bool):
                raise _err(where, f"parameters.{key}", entry, "a bare boolean (true/false) is required")
            kw[key] = entry
            continue
        if not isinstance(entry, dict):
            raise _err(where, f"parameters.{key}", entry, "missing unit: write { value = ..., unit = \"...\" } "
                       f"with unit one of {', '.join(UNITS[spec.kind])} ({KIND_DOC[spec.kind]})")
        bad = set(entry) - _PARAM_ENTRY_KEYS
        if bad:
            raise _err(where, f"parameters.{key}.{sorted(bad)[0]}", entry, f"unknown field; allowed: "
                       f"{', '.join(sorted(_PARAM_ENTRY_KEYS))}")
        if "unit" not in entry:
            raise _err(where, f"parameters.{key}", entry, f"missing unit; allowed units: {', '.join(UNITS[spec.kind])}"
                       f" ({KIND_DOC[spec.kind]})")
        if "value" not in entry:
            raise _err(where, f"parameters.{key}", entry, "missing value")
        value, unit = entry["value"], entry["unit"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(where, f"parameters.{key}", value, f"value must be a number ({KIND_DOC[spec.kind]})")
        if spec.kind == "count" and not isinstance(value, int):
            raise _err(where, f"parameters.{key}", value, "an integer count is required")
        if spec.kind == "count" and value < 0:
            raise _err(where, f"parameters.{key}", value, "a count must be >= 0")
        if not isinstance(unit, str) or unit not in UNITS[spec.kind]:
            raise _err(where, f"parameters.{key}.unit", unit, f"allowed units: {', '.join(UNITS[spec.kind])} "
                       f"({KIND_DOC[spec.kind]})")
        for opt, typ in (("source", str), ("note", str), ("verified", bool)):
            if opt in entry and not isinstance(entry[opt], typ):
                raise _err(where, f"parameters.{key}.{opt}", entry[opt], f"must be a {typ.__name__}")
        w_range = kw.get("w_max", 1.0) - kw.get("w_min", -1.0)
        try:
            conv = convert(spec.kind, float(value), unit, w_range=w_range)
        except ValueError as e:
            raise _err(where, f"parameters.{key}", value, str(e)) from None
        kw[key] = int(value) if spec.kind == "count" else conv
        text = entry.get("source", "")
        if entry.get("note"):
            text = f"{text}; {entry['note']}" if text else entry["note"]
        if entry.get("verified") is False:
            text = f"UNVERIFIED: {text}" if text else "UNVERIFIED"
        if text:
            prov.append((key, text))
    try:
        return DeviceCard(name=dev["name"], model=model, description=dev.get("description", ""),
                          citation=dev.get("citation", ""), source=dev.get("source", ""),
                          references=tuple(refs), notes=dev.get("notes", ""), provenance=tuple(prov), **kw)
    except DeviceCardError as e:
        raise DeviceCardError(str(e).replace("DeviceCard:", f"{where}:", 1)) from None


# ---------------------------------------------------------------------- writing
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def card_to_toml(card: DeviceCard, *, only_nondefault: bool = True, header: str = "") -> str:
    """The card as TOML text in the canonical units (loadable by :func:`load_card`)."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    lines += ["[device]", f"name = {_q(card.name)}", f"model = {_q(card.model)}"]
    for k in ("description", "citation", "source", "notes"):
        if getattr(card, k):
            lines.append(f"{k} = {_q(getattr(card, k))}")
    if card.references:
        lines.append("references = [" + ", ".join(_q(r) for r in card.references) + "]")
    lines += ["", "[parameters]"]
    # mult_noise's field default is None (the model's default), so it is always written where it applies
    defaults = {f.name: f.default for f in fields(DeviceCard)}
    prov = dict(card.provenance)
    for key, spec in PARAMETERS.items():
        if card.model not in spec.models:
            continue
        v = getattr(card, key)
        if only_nondefault and key not in ("g_min", "g_max") and v == defaults.get(key):
            continue
        if spec.kind == "bool":
            lines.append(f"{key} = {_fmt(v)}")
            continue
        src = f", source = {_q(prov[key])}" if key in prov else ""
        lines.append(f"{key} = {{ value = {_fmt(v)}, unit = {_q(canonical_unit(spec.kind))}{src} }}")
    return "\n".join(lines) + "\n"


def dump_card(card: DeviceCard, path: str | os.PathLike, header: str = "") -> Path:
    p = Path(path)
    try:
        p.write_text(card_to_toml(card, header=header), encoding="utf-8")
    except OSError as e:
        raise DeviceCardError(f"{p}: cannot write the device card ({e.strerror or e})") from None
    return p
