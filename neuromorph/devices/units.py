"""Units of device-card parameters.

Every number in a device card carries its unit (``{ value = 2.5e-5, unit = "S" }``). Each parameter has a *kind*
and the kind fixes the units it accepts and how they are converted to the internal (SI / dimensionless) value:

=================  ======================================================  ===========================================
kind               accepted units                                          internal value
=================  ======================================================  ===========================================
conductance        S, mS, uS, nS, pS; or a resistance: ohm, kohm, Mohm,    siemens (a resistance R is stored as 1/R)
                   Gohm
range_fraction     range, %range (fraction of g_max - g_min);              fraction of the conductance range
                   w (aihwkit normalised weight units, divided by
                   w_max - w_min of the same card)
gmax_fraction      g_max, %g_max                                           fraction of the card's g_max
dimensionless      1, %                                                    pure number (% divided by 100)
count              levels, pulses, 1                                       int
time               s, ms, us, ns                                           seconds
energy             J, mJ, uJ, nJ, pJ, fJ, aJ                               joules
voltage            V, mV                                                   volts
=================  ======================================================  ===========================================
"""

from __future__ import annotations

__all__ = ["UNITS", "KIND_DOC", "canonical_unit"]

_CONDUCTANCE = {"S": 1.0, "mS": 1e-3, "uS": 1e-6, "nS": 1e-9, "pS": 1e-12}
_RESISTANCE = {"ohm": 1.0, "kohm": 1e3, "Mohm": 1e6, "Gohm": 1e9}

#: kind -> {unit: scale}; resistances are handled separately (inverted) for the conductance kind.
UNITS: dict[str, dict[str, float]] = {
    "conductance": {**_CONDUCTANCE, **_RESISTANCE},
    "range_fraction": {"range": 1.0, "%range": 0.01, "w": float("nan")},  # 'w' needs the card's w range
    "gmax_fraction": {"g_max": 1.0, "%g_max": 0.01},
    "dimensionless": {"1": 1.0, "%": 0.01},
    "count": {"levels": 1.0, "pulses": 1.0, "1": 1.0},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "energy": {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9, "pJ": 1e-12, "fJ": 1e-15, "aJ": 1e-18},
    "voltage": {"V": 1.0, "mV": 1e-3},
}

KIND_DOC = {
    "conductance": "siemens (S, mS, uS, nS, pS) or a resistance (ohm, kohm, Mohm, Gohm) stored as 1/R",
    "range_fraction": "fraction of the conductance range g_max - g_min ('range', '%range'), or aihwkit "
                      "normalised weight units 'w' (divided by w_max - w_min)",
    "gmax_fraction": "fraction of g_max ('g_max', '%g_max')",
    "dimensionless": "dimensionless ('1', or '%')",
    "count": "integer count ('levels', 'pulses' or '1')",
    "time": "seconds (s, ms, us, ns)",
    "energy": "joules (J, mJ, uJ, nJ, pJ, fJ, aJ)",
    "voltage": "volts (V, mV)",
}

_CANONICAL = {"conductance": "S", "range_fraction": "range", "gmax_fraction": "g_max", "dimensionless": "1",
              "count": "levels", "time": "s", "energy": "J", "voltage": "V"}


def canonical_unit(kind: str) -> str:
    """The unit in which a value of ``kind`` is stored internally (and written by :func:`dump_card`)."""
    return _CANONICAL[kind]


def convert(kind: str, value: float, unit: str, *, w_range: float | None = None) -> float:
    """Convert ``value`` given in ``unit`` to the internal value of ``kind``. Raises KeyError for a foreign unit."""
    table = UNITS[kind]
    if unit not in table:
        raise KeyError(unit)
    if kind == "conductance" and unit in _RESISTANCE:
        r = value * _RESISTANCE[unit]
        if r <= 0:
            raise ValueError("a resistance must be > 0")
        return _clean(1.0 / r)
    if kind == "range_fraction" and unit == "w":
        if w_range is None or not w_range > 0:
            raise ValueError("unit 'w' needs w_max > w_min in the same card")
        return _clean(value / w_range)
    return _clean(value * table[unit])


def _clean(x: float) -> float:
    """Drop the last-bit noise of a unit conversion (10 * 1e-6 -> 1e-05, not 9.999999999999999e-06)."""
    return float(f"{x:.15g}")
