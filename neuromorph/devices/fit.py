"""Fit a device card to a measured pulse response (``neuromorph device fit CSV --model ...``).

Input: a CSV with columns ``pulse`` (cumulative pulse number, increasing), ``conductance_S`` (the conductance read
after that pulse, in siemens) and optionally ``direction`` (``up``/``down``, ``+1``/``-1``, ``potentiation``/
``depression`` or ``LTP``/``LTD``: the direction of the pulses that led to the row; the first row is the initial
state). Without a ``direction`` column the curve is taken as potentiation up to its maximum, then depression (the
usual measurement). Rows may be several pulses apart.

The fit (``scipy.optimize.least_squares``) minimises the distance between the measured curve and the deterministic
model curve started from a fitted initial conductance (what NeuroSim's ``nonlinear_fit.m`` does for its model):

* ``neurosim``: G_min, G_max, NL_LTP, NL_LTD with the level counts fixed to the numbers of pulses of the first
  potentiation and depression runs (or ``levels``), see :mod:`neuromorph.devices.neurosim`;
* ``soft_bounds``: G_min, G_max and the relative steps alpha_up, alpha_down of g += alpha_up (G_max - g),
  g -= alpha_down (g - G_min), returned in aihwkit form (w_min = -1, w_max = 1, dw_min, up_down);
* ``linear_step``: G_min, G_max (hard bounds) and aihwkit's s_up, s_down, gamma_up, gamma_down with
  w_min = -1, w_max = 1 and mean_bound_reference.

The cycle-to-cycle noise is then estimated from the one-step residuals (measured step minus the model's step from
the measured conductance): NeuroSim ``c2c_sigma`` = std / range; aihwkit ``dw_min_std`` = std relative to the
(model) step for linear step (multiplicative noise) and to dw_min for soft bounds (additive noise).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from . import neurosim as ns
from .cards import DeviceCard

__all__ = ["FitResult", "read_pulse_csv", "fit_pulse_response", "fit_csv", "FIT_MODELS"]

FIT_MODELS = ("neurosim", "soft_bounds", "linear_step")
_UP = {"up", "+1", "1", "+", "potentiation", "ltp", "set"}
_DOWN = {"down", "-1", "-", "depression", "ltd", "reset"}


@dataclass
class FitResult:
    card: DeviceCard
    params: dict[str, float]
    rmse: float  # [S], of the fitted curve
    n_points: int
    model_curve: np.ndarray = field(repr=False)


def read_pulse_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pulse, conductance_S, direction) arrays; direction[i] in {+1, -1} for the pulses leading to row i
    (direction[0] = 0), inferred (up to the maximum, then down) when the CSV has no direction column."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such CSV file")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "pulse" not in cols or "conductance_S" not in cols:
            raise ValueError(f"{p}: the CSV needs a header with columns 'pulse' and 'conductance_S' (optional "
                             f"'direction'); found {cols}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if len(rows) < 4:
        raise ValueError(f"{p}: at least 4 data rows are needed, found {len(rows)}")
    pulses, g, d = [], [], []
    for i, r in enumerate(rows, start=2):
        try:
            pulses.append(float(r["pulse"]))
            g.append(float(r["conductance_S"]))
        except ValueError:
            raise ValueError(f"{p}, line {i}: pulse and conductance_S must be numbers, got {r['pulse']!r}, "
                             f"{r['conductance_S']!r}") from None
        if "direction" in r and r["direction"] != "":
            v = r["direction"].lower()
            if v in _UP:
                d.append(1)
            elif v in _DOWN:
                d.append(-1)
            else:
                raise ValueError(f"{p}, line {i}: direction {r['direction']!r} not understood (use up/down or +1/-1)")
        else:
            d.append(None)
    pulses_a, g_a = np.asarray(pulses), np.asarray(g)
    if not np.all(np.isfinite(g_a)) or np.any(g_a < 0):
        raise ValueError(f"{p}: conductances must be finite and >= 0 S")
    if np.any(np.diff(pulses_a) <= 0) or np.any(pulses_a != np.round(pulses_a)):
        raise ValueError(f"{p}: 'pulse' must be increasing integers (cumulative pulse number)")
    if all(x is None for x in d[1:]):
        top = int(np.argmax(g_a))
        if top == 0:
            raise ValueError(f"{p}: cannot infer directions (the maximum is the first row); add a direction column")
        dirs = np.array([0] + [1 if i <= top else -1 for i in range(1, len(g_a))])
    elif any(x is None for x in d[1:]):
        raise ValueError(f"{p}: the direction column must be filled for every row after the first")
    else:
        dirs = np.array([0] + d[1:])
    return pulses_a, g_a, dirs


# ---------------------------------------------------------------------- model curves (normalised units)
def _ns_g(p: float, a: float, pmax: float, lo: float, hi: float) -> float:
    if math.isinf(a):
        return lo + (hi - lo) * p / pmax
    return lo + (hi - lo) * math.expm1(-p / a) / math.expm1(-pmax / a)


def _ns_p(g: float, a: float, pmax: float, lo: float, hi: float) -> float:
    x = min(max((g - lo) / (hi - lo), 0.0), 1.0)
    if math.isinf(a):
        return x * pmax
    v = 1.0 + x * math.expm1(-pmax / a)
    p = pmax if v <= 0 else -a * math.log(v)
    return min(max(p, 0.0), pmax)


def _step(model: str, th: np.ndarray, g: float, d: int, k: int, lv: tuple[int, int]) -> float:
    """Conductance after k pulses of direction d from g (deterministic model, normalised units)."""
    if model == "neurosim":
        lo, hi, nl_u, nl_d = th
        if d > 0:
            a = ns.a_norm_from_label(round(nl_u, 12)) * lv[0]
            g = _ns_g(_ns_p(g, a, lv[0], lo, hi) + k, a, lv[0], lo, hi)
        else:
            a = ns.a_norm_from_label(round(nl_d, 12)) * lv[1]
            g = _ns_g(_ns_p(g, a, lv[1], lo, hi) - k, a, lv[1], lo, hi)
        return min(max(g, lo), hi)
    if model == "soft_bounds":
        lo, hi, au, ad = th
        if d > 0:
            return hi - (hi - g) * (1 - au) ** k
        return lo + (g - lo) * (1 - ad) ** k
    # linear_step in w in [-1, 1]
    lo, hi, su, sd, gu, gd = th
    w = 2 * (g - lo) / (hi - lo) - 1
    for _ in range(k):
        w = w + su * (1 - gu * w) if d > 0 else w - sd * (1 + gd * w)
        w = min(max(w, -1.0), 1.0)
    return lo + (w + 1) * (hi - lo) / 2


def _curve(model, th, g0, dirs, counts, lv) -> np.ndarray:
    out = [g0]
    g = g0
    for d, k in zip(dirs[1:], counts[1:]):
        g = _step(model, th, g, int(d), int(k), lv)
        out.append(g)
    return np.asarray(out)


def fit_pulse_response(g: np.ndarray, dirs: np.ndarray, model: str, *, pulses: np.ndarray | None = None,
                       levels: tuple[int, int] | int | None = None, name: str = "fitted device",
                       objective: str = "one_step") -> FitResult:
    """Fit ``model`` to the measured conductances ``g`` [S] with per-row pulse directions ``dirs`` (see
    :func:`read_pulse_csv`). ``objective``: "one_step" (default; each measured point predicted from the previous
    measured point: consistent for cycle-to-cycle noise, which makes a single device's curve a random walk) or
    "trajectory" (the whole model curve from a fitted start against the data: best for averaged, low-noise
    curves). Returns the fitted :class:`DeviceCard` and the parameters."""
    if model not in FIT_MODELS:
        raise ValueError(f"fit model must be one of {', '.join(FIT_MODELS)}, not {model!r}")
    if objective not in ("one_step", "trajectory"):
        raise ValueError(f"objective must be 'one_step' or 'trajectory', not {objective!r}")
    g = np.asarray(g, dtype=np.float64)
    dirs = np.asarray(dirs)
    counts = np.ones(len(g), dtype=int) if pulses is None else np.concatenate([[0], np.diff(pulses).astype(int)])
    counts[0] = 0
    lo_d, hi_d = float(g.min()), float(g.max())
    scale = hi_d - lo_d
    if not scale > 0:
        raise ValueError("the measured conductance is constant; nothing to fit")
    gn = (g - lo_d) / scale  # normalised data

    # level counts: pulses of the first potentiation run and of the first depression run
    def first_run(sign: int) -> int:
        idx = np.nonzero(dirs == sign)[0]
        if len(idx) == 0:
            return 0
        n, i = 0, idx[0]
        while i < len(dirs) and dirs[i] == sign:
            n += counts[i]
            i += 1
        return int(n)

    if levels is None:
        lv = (first_run(1), first_run(-1))
    elif isinstance(levels, int):
        lv = (levels, levels)
    else:
        lv = (int(levels[0]), int(levels[1]))
    if model == "neurosim" and (lv[0] < 1 or lv[1] < 1):
        raise ValueError("the neurosim fit needs both a potentiation and a depression run (or levels=...)")

    def resid(x: np.ndarray) -> np.ndarray:
        if objective == "trajectory":
            return _curve(model, x[1:], x[0], dirs, counts, lv) - gn
        th = x[1:]
        return np.array([_step(model, th, gn[i - 1], int(dirs[i]), int(counts[i]), lv) - gn[i]
                         for i in range(1, len(gn))])

    if model == "neurosim":
        starts = [[gn[0], 0.0, 1.0, u, d] for u, d in ((1, -1), (1, 1), (-1, -1), (-1, 1))]
        lb, ub = [-0.5, -0.5, 0.5, -9, -9], [1.5, 0.5, 1.5, 9, 9]
    elif model == "soft_bounds":
        starts = [[gn[0], 0.0, 1.0, a, a] for a in (0.005, 0.02, 0.1)]
        lb, ub = [-0.5, -5.0, 0.5, 1e-7, 1e-7], [1.5, 0.5, 6.0, 0.999, 0.999]
    else:
        n_up = max(lv[0], 1)
        starts = [[gn[0], 0.0, 1.0, 2.0 / n_up, 2.0 / n_up, gam, gam] for gam in (0.0, 0.3, 0.8)]
        lb, ub = [-0.5, -0.5, 0.5, 1e-6, 1e-6, 0.0, 0.0], [1.5, 0.5, 1.5, 1.0, 1.0, 10.0, 10.0]
    best = None
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, dtype=float), np.asarray(lb) + 1e-9, np.asarray(ub) - 1e-9)
        r = least_squares(resid, x0, bounds=(lb, ub), x_scale="jac", diff_step=1e-6, max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    x = best.x
    th = x[1:]
    if objective == "one_step":
        x[0] = gn[0]
    curve_n = _curve(model, th, x[0], dirs, counts, lv)
    rmse = float(np.sqrt(np.mean((curve_n - gn) ** 2)) * scale)
    g_min, g_max = lo_d + th[0] * scale, lo_d + th[1] * scale
    if g_min < 0:
        raise ValueError(f"the fitted G_min is negative ({g_min:g} S): the model does not describe these data")

    # one-step residuals -> cycle-to-cycle noise (steps that end on a bound are clipped: left out)
    lo_n, hi_n = th[0], th[1]
    eps = 1e-9 * (hi_n - lo_n)
    res, steps, sgn = [], [], []
    for i in range(1, len(gn)):
        if counts[i] != 1:
            continue
        pred = _step(model, th, gn[i - 1], int(dirs[i]), 1, lv)
        if min(pred, gn[i]) <= lo_n + eps or max(pred, gn[i]) >= hi_n - eps:
            continue
        res.append(gn[i] - pred)
        steps.append(pred - gn[i - 1])
        sgn.append(int(dirs[i]))
    res_a, steps_a, sgn_a = np.asarray(res), np.asarray(steps), np.asarray(sgn)
    params: dict[str, float] = {"g_min": g_min, "g_max": g_max, "g_start": lo_d + x[0] * scale}
    rng = th[1] - th[0]
    if model == "neurosim":
        c2c = float(np.std(res_a) / rng) if len(res_a) > 2 else 0.0
        params.update(nl_ltp=float(th[2]), nl_ltd=float(th[3]), max_pulses=lv[0], max_pulses_ltd=lv[1],
                      c2c_sigma=c2c)
        card = DeviceCard(name=name, model="neurosim", g_min=g_min, g_max=g_max, nl_ltp=round(float(th[2]), 4),
                          nl_ltd=round(float(th[3]), 4), max_pulses=lv[0],
                          max_pulses_ltd=0 if lv[1] == lv[0] else lv[1], c2c_sigma=c2c,
                          description=f"fitted ({model}) to a measured pulse response")
    else:
        if model == "soft_bounds":
            su, sd = float(th[2]), float(th[3])  # in w units with bounds +-1: s = alpha * |bound|
            gu = gd = 1.0
        else:
            su, sd, gu, gd = (float(v) for v in th[2:])
        dw_w = max(su, sd)
        up_down = 1 - sd / su if su >= sd else su / sd - 1
        if len(res_a) <= 2:
            dws = 0.0
        elif model == "soft_bounds":  # additive: residual = scale_d * sigma * xi (in w units)
            dws = float(np.std(2 * res_a / rng / np.where(sgn_a > 0, su, sd)))
        else:  # multiplicative: residual = step * sigma * xi
            ok = np.abs(steps_a) > 1e-12 * rng
            dws = float(np.std(res_a[ok] / steps_a[ok])) if ok.sum() > 2 else 0.0
        params.update(dw_min=dw_w / 2, up_down=up_down, dw_min_std=dws)
        extra = {"gamma_up": gu, "gamma_down": gd, "mult_noise": True, "mean_bound_reference": True} \
            if model == "linear_step" else {"mult_noise": False}
        if model == "linear_step":
            params.update(gamma_up=gu, gamma_down=gd)
        card = DeviceCard(name=name, model=model, g_min=g_min, g_max=g_max, w_min=-1.0, w_max=1.0,
                          dw_min=dw_w / 2, up_down=up_down, dw_min_std=dws,
                          description=f"fitted ({model}) to a measured pulse response", **extra)
    return FitResult(card=card, params=params, rmse=rmse, n_points=len(g), model_curve=lo_d + curve_n * scale)


def fit_csv(path: str | os.PathLike, model: str, *, levels: int | tuple[int, int] | None = None,
            name: str | None = None, objective: str = "one_step") -> FitResult:
    """Read a pulse-response CSV (see :func:`read_pulse_csv`) and fit ``model`` to it."""
    pulses, g, dirs = read_pulse_csv(path)
    res = fit_pulse_response(g, dirs, model, pulses=pulses, levels=levels, name=name or Path(path).stem,
                             objective=objective)
    src = f"fit of {Path(path).name} ({res.n_points} points, rmse {res.rmse:.3g} S) by neuromorph device fit"
    from dataclasses import replace

    return FitResult(card=replace(res.card, source=src), params=res.params, rmse=res.rmse, n_points=res.n_points,
                     model_curve=res.model_curve)
