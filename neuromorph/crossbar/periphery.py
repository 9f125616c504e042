r"""Periphery of a crossbar tile: DACs on the input lines, TIAs + ADCs on the output lines, line resistance.

Units and conventions
---------------------
An input value ``x`` (dimensionless, e.g. a neuron activation) is applied as the voltage

.. math:: V = x \, V_\mathrm{read} / x_\mathrm{max} \quad [\mathrm{V}],

i.e. ``x_max`` is the input value that maps to the full-scale read voltage ``v_read``. The differential current of an
output line is converted back to weight units with the same factor and the weight scale ``g0`` [S]:

.. math:: y = I / (g_0 \, V_\mathrm{read} / x_\mathrm{max}),\qquad I = \sum_j (G^+_{ij} - G^-_{ij}) V_j \;[\mathrm{A}],

so that an ideal tile returns ``y = W x`` with ``W = (G+ - G-)/g0``.

Converters (both *mid-tread*, zero is a code):

* DAC, ``dac_bits = b``: signed (default) codes ``k = -(2^(b-1) - 1) ... 2^(b-1) - 1`` (sign-magnitude, symmetric),
  ``LSB = v_read / (2^(b-1) - 1)``; unsigned (``dac_signed=False``, inputs >= 0 such as firing rates) codes
  ``0 ... 2^b - 1``, ``LSB = v_read / (2^b - 1)``. Inputs are clipped to ``[-v_read, v_read]`` (``[0, v_read]``)
  and rounded to the nearest code: the error of an in-range input is at most LSB/2.
* ADC, ``adc_bits = b``: signed, ``LSB = adc_range / (2^(b-1) - 1)``, full scale ``±adc_range`` given in amperes
  (``adc_unit="A"``) or in weight units (``adc_unit="w"``, converted with the factor above). One ADC per output line
  *per tile*: each tile's partial sum is clipped and quantised, then the partial sums of the tiles along the input
  dimension are added digitally (exactly).
* ``dac_bits=None`` is an ideal DAC (no clipping, no quantisation); ``adc_bits=None`` an ideal ADC, which still
  clips at ``±adc_range`` when a range is given (a saturating TIA without quantisation).

Line resistance: ``r_row`` [Ω] is the resistance of one segment of an input (word) line between adjacent cells (and
between the driver and the first cell), ``r_col`` [Ω] the same for an output (bit) line (the last segment ends at the
TIA). See :mod:`neuromorph.crossbar.irdrop` for the grid and its solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = ["Periphery", "quantise", "converter_lsb"]

IR_SOLVERS = ("exact", "iterative")
ADC_UNITS = ("A", "w")


def converter_lsb(bits: int, full_scale: float, signed: bool = True) -> float:
    """LSB of a mid-tread converter: ``full_scale / (2^(bits-1) - 1)`` signed, ``full_scale / (2^bits - 1)``
    unsigned (same unit as ``full_scale``)."""
    return full_scale / (2 ** (bits - 1) - 1) if signed else full_scale / (2**bits - 1)


def quantise(v: torch.Tensor, bits: int | None, full_scale: float | None, signed: bool = True) -> torch.Tensor:
    """Clip ``v`` to the converter range and round to the nearest code (see the module docstring).

    ``bits=None``: no quantisation (clipping only if ``full_scale`` is given). ``full_scale`` in the unit of ``v``.
    """
    if full_scale is None:
        if bits is not None:
            raise ValueError("a quantising converter needs its full-scale range")
        return v
    lo = -full_scale if signed else 0.0
    v = v.clamp(lo, full_scale)
    if bits is None:
        return v
    lsb = converter_lsb(bits, full_scale, signed)
    return torch.round(v / lsb) * lsb


def _check_bits(name: str, bits: int | None, signed: bool) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{name} = {bits!r}: an integer number of bits (or None for an ideal converter) is required")
    least = 2 if signed else 1
    if bits < least:
        kind = "a signed (sign-magnitude, mid-tread) converter needs >= 2 bits" if signed else \
            "an unsigned converter needs >= 1 bit"
        raise ValueError(f"{name} = {bits}: {kind}")
    if bits > 48:
        raise ValueError(f"{name} = {bits}: at most 48 bits are supported (use None for an ideal converter)")


def _check_positive(name: str, value: float, unit: str, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} = {value!r}: a finite number [{unit}] is required")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} = {value!r} {unit}: must be {'>= 0' if allow_zero else '> 0'} {unit}")


@dataclass(frozen=True)
class Periphery:
    """DAC / ADC / line-resistance parameters of every tile of a layer (physical units; see the module docstring).

    ======================  ==========  ========================================================================
    field                   unit        meaning
    ======================  ==========  ========================================================================
    ``dac_bits``            bits        input DAC resolution; None = ideal DAC (no clipping, no quantisation)
    ``v_read``              V           full-scale read voltage (the voltage of input ``x_max``)
    ``x_max``               input       input value mapped to ``v_read``
    ``dac_signed``          --          signed inputs (True) or unsigned inputs >= 0 (False)
    ``adc_bits``            bits        output ADC resolution (signed); None = no quantisation
    ``adc_range``           A or w      ADC full scale ±adc_range (required with ``adc_bits``)
    ``adc_unit``            --          "A" (amperes) or "w" (weight units: ``y`` of ``y = W x``)
    ``r_row``               Ω           resistance of one input-line (word-line) segment; 0 = no IR drop
    ``r_col``               Ω           resistance of one output-line (bit-line) segment; 0 = no IR drop
    ``ir_solver``           --          "exact" (sparse LU, scipy) or "iterative" (vectorised fixed point)
    ``ir_tol``              1           iterative solver: stop when max |ΔV| < ir_tol · max |V_drive|
    ``ir_max_iter``         --          iterative solver: iteration limit (error if not converged)
    ``read_noise``          --          use the devices' read noise / drift (``DeviceArray.read``) or the
                                        programmed conductances
    ======================  ==========  ========================================================================
    """

    dac_bits: int | None = None
    v_read: float = 0.2
    x_max: float = 1.0
    dac_signed: bool = True
    adc_bits: int | None = None
    adc_range: float | None = None
    adc_unit: str = "w"
    r_row: float = 0.0
    r_col: float = 0.0
    ir_solver: str = "exact"
    ir_tol: float = 1e-12
    ir_max_iter: int = 2000
    read_noise: bool = True

    def __post_init__(self) -> None:
        _check_bits("dac_bits", self.dac_bits, self.dac_signed)
        _check_bits("adc_bits", self.adc_bits, True)
        _check_positive("v_read", self.v_read, "V")
        _check_positive("x_max", self.x_max, "input units")
        if self.adc_unit not in ADC_UNITS:
            raise ValueError(f"adc_unit = {self.adc_unit!r}: allowed units are {', '.join(ADC_UNITS)}")
        if self.adc_range is not None:
            _check_positive("adc_range", self.adc_range, self.adc_unit)
        elif self.adc_bits is not None:
            raise ValueError(f"adc_bits = {self.adc_bits} needs adc_range (the ADC full scale, in {self.adc_unit})")
        _check_positive("r_row", self.r_row, "ohm", allow_zero=True)
        _check_positive("r_col", self.r_col, "ohm", allow_zero=True)
        if self.ir_solver not in IR_SOLVERS:
            raise ValueError(f"ir_solver = {self.ir_solver!r}: allowed solvers are {', '.join(IR_SOLVERS)}")
        _check_positive("ir_tol", self.ir_tol, "1")
        if isinstance(self.ir_max_iter, bool) or not isinstance(self.ir_max_iter, int) or self.ir_max_iter < 1:
            raise ValueError(f"ir_max_iter = {self.ir_max_iter!r}: an integer >= 1 is required")

    @classmethod
    def ideal(cls, **overrides) -> Periphery:
        """Perfect periphery: ideal DAC and ADC, no line resistance, no read noise (``v_read``, ``x_max`` kept at
        their defaults unless overridden)."""
        base = cls(dac_bits=None, adc_bits=None, adc_range=None, r_row=0.0, r_col=0.0, read_noise=False)
        return replace(base, **overrides)

    @property
    def ir_drop(self) -> bool:
        """True when a line resistance is set (the tile grid is then solved by nodal analysis)."""
        return self.r_row > 0 or self.r_col > 0

    @property
    def volts_per_input(self) -> float:
        """``v_read / x_max`` [V per input unit]."""
        return self.v_read / self.x_max

    def dac_lsb(self) -> float | None:
        """DAC LSB [V] (None for an ideal DAC)."""
        return None if self.dac_bits is None else converter_lsb(self.dac_bits, self.v_read, self.dac_signed)

    def dac(self, x: torch.Tensor) -> torch.Tensor:
        """Input values -> line voltages [V]: scale by ``v_read/x_max``, clip, quantise (ideal DAC: scale only)."""
        v = x * self.volts_per_input
        if self.dac_bits is None:
            return v
        return quantise(v, self.dac_bits, self.v_read, self.dac_signed)

    def adc_full_scale_amps(self, g0: float) -> float | None:
        """ADC full scale [A] for a weight scale ``g0`` [S] (None without a range)."""
        if self.adc_range is None:
            return None
        return self.adc_range if self.adc_unit == "A" else self.adc_range * g0 * self.volts_per_input

    def adc_lsb_amps(self, g0: float) -> float | None:
        """ADC LSB [A] (None without quantisation)."""
        fs = self.adc_full_scale_amps(g0)
        return None if self.adc_bits is None or fs is None else converter_lsb(self.adc_bits, fs, True)

    def adc(self, current: torch.Tensor, g0: float) -> torch.Tensor:
        """Differential output currents [A] -> clipped / quantised currents [A] (one ADC per line per tile)."""
        return quantise(current, self.adc_bits, self.adc_full_scale_amps(g0), True)
