"""NeuroSim's nonlinear weight-update model (Chen, Peng & Yu, NeuroSim+, IEDM 2017; MLP_NeuroSim_V3.0).

Potentiation (LTP) follows ``G(P) = B (1 - exp(-P/A)) + G_min`` with ``B = (G_max - G_min)/(1 - exp(-P_max/A))``,
P the pulse number (0 at G_min, P_max at G_max). Depression (LTD) uses the same form with its own A_LTD and
P_max,LTD: a pulse moves P by one (``P -> P - 1``) on the LTD curve. This is exactly NeuroSim's
``RealDevice::Write`` (MLP_NeuroSim_V3.0 ``Cell.cpp``): invert P from the current G (``InvNonlinearWeight``), step,
re-evaluate (``NonlinearWeight``), clip to [G_min, G_max]. A negative A (negative label) makes the curve convex;
for LTD this is the usual saturating depression. LTP and LTD labels of the same sign give one reversible curve.

Nonlinearity label -> A. NeuroSim maps the label NL to A through a table (``getParamA`` in ``formula.cpp``,
``documents/Nonlinearity-NormA.htm``): ``A = sign(NL) * A_norm(|NL|) * P_max`` with A_norm tabulated for
NL = 0.01 ... 9 in steps of 0.01. We use the relation that generates that table instead of the lookup: with
``g(x) = (1 - exp(-x/a)) / (1 - exp(-1/a))`` the normalised curve, the largest gap to the straight line is
``max_x [g(x) - x] = 0.07 * sqrt(2) * NL`` (i.e. 0.07 NL measured perpendicular to the diagonal). Solved for ``a``
it reproduces every printed table entry to within the table's 6-decimal rounding (checked in
``tests/test_devices.py``). Differences to NeuroSim's lookup: labels between the 0.01 grid points are used as they
are (NeuroSim truncates with ``(int)(|NL|*100)``, which also drops a few grid labels to the entry below, e.g.
0.29*100 = 28.999999999999996; none of the preset labels is affected); NL = 0 gives the linear update (NeuroSim's
``nonlinearWrite = false``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from scipy.optimize import brentq

__all__ = ["NL_GAP", "a_norm_from_label", "label_from_a_norm", "param_a", "curve", "inverse_curve"]

#: max_x [g(x) - x] per unit of nonlinearity label (0.07 * sqrt(2)).
NL_GAP = 0.07 * math.sqrt(2.0)
_U_MAX = 1e4


def _gap(u: float) -> float:
    """max_x [g(x) - x] for g(x) = (1 - e^{-u x})/(1 - e^{-u}), u = 1/a > 0."""
    if u < 1e-6:
        return u / 8.0
    em = -math.expm1(-u)  # 1 - e^{-u}
    x_star = -math.log(em / u) / u
    return 1.0 / em - 1.0 / u - x_star


@lru_cache(maxsize=4096)
def a_norm_from_label(nl: float) -> float:
    """Normalised A (A / P_max) of the NeuroSim label ``nl`` (signed; +inf for nl = 0, the linear device)."""
    nl = float(nl)
    if nl == 0.0:
        return math.inf
    if abs(nl) > 9.0 + 1e-12:
        raise ValueError(f"NeuroSim nonlinearity label {nl} outside [-9, 9]")
    target = NL_GAP * abs(nl)
    u = brentq(lambda u: _gap(u) - target, 1e-14, _U_MAX, xtol=1e-15, rtol=1e-15, maxiter=500)
    return math.copysign(1.0 / u, nl)


def label_from_a_norm(a_norm: float) -> float:
    """Inverse of :func:`a_norm_from_label` (the label of a fitted curve)."""
    if math.isinf(a_norm):
        return 0.0
    return math.copysign(_gap(1.0 / abs(a_norm)) / NL_GAP, a_norm)


def param_a(nl: float, max_pulses: int) -> float:
    """NeuroSim's ``paramA = getParamA(NL) * maxNumLevel`` (in pulses; +-inf for a linear curve)."""
    return a_norm_from_label(nl) * max_pulses


def curve(p: torch.Tensor, a: torch.Tensor, p_max: float, g_min: torch.Tensor, g_max: torch.Tensor) -> torch.Tensor:
    """G(P) on the curve with parameter ``a`` (pulses; inf = linear), P_max levels, bounds g_min, g_max (no clip)."""
    rng = g_max - g_min
    lin = torch.isinf(a)
    a_safe = torch.where(lin, torch.ones_like(a), a)
    # B (1 - e^{-P/A}) = range * expm1(-P/A) / expm1(-P_max/A)
    nonlin = rng * torch.expm1(-p / a_safe) / torch.expm1(-p_max / a_safe)
    return g_min + torch.where(lin, rng * p / p_max, nonlin)


def inverse_curve(g: torch.Tensor, a: torch.Tensor, p_max: float, g_min: torch.Tensor,
                  g_max: torch.Tensor) -> torch.Tensor:
    """P(G), the inverse of :func:`curve` (``InvNonlinearWeight``: P = -A log(1 - (G - G_min)/B))."""
    rng = g_max - g_min
    x = ((g - g_min) / rng).clamp(0.0, 1.0)
    lin = torch.isinf(a)
    a_safe = torch.where(lin, torch.ones_like(a), a)
    # 1 - (G - G_min)/B = 1 + x * expm1(-P_max/A)
    nonlin = -a_safe * torch.log1p(x * torch.expm1(-p_max / a_safe))
    return torch.where(lin, x * p_max, nonlin).clamp(0.0, p_max)
