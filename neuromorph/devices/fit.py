"""Fit a device card to a measured pulse response (``neuromorph device fit CSV --model ...``).

Input: a UTF-8 CSV with columns ``pulse`` (cumulative pulse number, increasing), ``conductance_S`` (the conductance
read after that pulse, in siemens) and optionally ``direction`` (``up``/``down``, ``+1``/``-1``, ``potentiation``/
``depression`` or ``LTP``/``LTD``: the direction of the pulses that led to the row; the first row is the initial
state). Rows may be several pulses apart.

Without a ``direction`` column the curve is taken as one potentiation run then one depression run (the usual
measurement) and the turning point is inferred: first at the maximum of the curve smoothed by a centred moving
average (the raw maximum of a noisy curve that saturates at the top lies anywhere on the plateau), then moved by
:func:`fit_pulse_response` to the row where the fitted model's one-step residuals are smallest (alternating with
the fit until the turning point stays put). The result says so (:attr:`FitResult.notes`).

The fit (``scipy.optimize.least_squares``) minimises the distance between the measured curve and the deterministic
model curve started from a fitted initial conductance (what NeuroSim's ``nonlinear_fit.m`` does for its model):

* ``neurosim``: G_min, G_max, NL_LTP, NL_LTD with the level counts fixed to the numbers of pulses of the first
  potentiation and depression runs (or ``levels``), see :mod:`neuromorph.devices.neurosim`;
* ``soft_bounds``: G_min, G_max and the relative steps alpha_up, alpha_down of g += alpha_up (G_max - g),
  g -= alpha_down (g - G_min), returned in aihwkit form (w_min = -1, w_max = 1, dw_min, up_down);
* ``linear_step``: G_min, G_max (hard bounds) and aihwkit's s_up, s_down, gamma_up, gamma_down with
  w_min = -1, w_max = 1 and mean_bound_reference (gamma is capped at 1/s: a step that overshoots its own fixed point
  is not a linear-step device).

Every model is evaluated in closed form over all rows at once (NumPy): the one-step objective has no loop over rows
or pulses; the trajectory objective loops over the runs of one direction (two for the usual measurement), each run in
closed form. The quality of the fit is reported per direction (:attr:`FitResult.quality`: R² of the model curve
against the data and its RMSE relative to the fitted conductance range), with a warning
(:attr:`FitResult.warnings`) when it is poor.

The cycle-to-cycle noise is then estimated from the one-step residuals (measured step minus the model's step from
the measured conductance): NeuroSim ``c2c_sigma`` = std / range; aihwkit ``dw_min_std`` = std relative to the
(model) step for linear step (multiplicative noise) and to dw_min for soft bounds (additive noise).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from . import neurosim as ns
from .cards import DeviceCard, DeviceCardError, parameter_range, read_text_file

__all__ = ["FitResult", "read_pulse_csv", "fit_pulse_response", "fit_csv", "plot_fit", "FIT_MODELS",
           "CSV_EXPECTED", "MIN_LEVELS", "MAX_LEVELS", "POOR_R2", "POOR_RMSE"]

FIT_MODELS = ("neurosim", "soft_bounds", "linear_step")
_UP = {"up", "+1", "1", "+", "potentiation", "ltp", "set"}
_DOWN = {"down", "-1", "-", "depression", "ltd", "reset"}
CSV_EXPECTED = ("a UTF-8 CSV file with a header line and the columns pulse,conductance_S[,direction] (pulse: "
                "cumulative pulse number; conductance_S in siemens; direction: up/down)")
MIN_LEVELS = 2
MAX_LEVELS = int(parameter_range("max_pulses")[1])
#: A direction whose model curve explains less than this fraction of the variance (R²), or misses the data by more
#: than this fraction of the conductance range (RMSE), is reported as a poor fit.
POOR_R2 = 0.9
POOR_RMSE = 0.1
#: A fitted nonlinearity label (NL, gamma) with a larger 1-sigma standard error, or a step with a larger relative
#: one, is reported as not determined by the data.
MAX_LABEL_STDERR = 0.5
MAX_STEP_REL_STDERR = 0.2
#: The trajectory objective evaluates the model run by run (one closed form per run of one direction).
MAX_TRAJECTORY_RUNS = 2000
#: Curves with more rows are fitted first on this many evenly spaced rows (multi-start, turning point), then on all.
SUBSET_ROWS = 20000
#: ``progress`` is called at most every this many seconds during a fit (and not before).
PROGRESS_EVERY_S = 2.0
_MAX_SPLIT_ROUNDS = 8
_SCREEN_NFEV = 30  # function evaluations of each start of a multi-start fit before the best one is continued


@dataclass
class FitResult:
    card: DeviceCard
    params: dict[str, float]
    rmse: float  # [S], of the fitted curve
    n_points: int
    model_curve: np.ndarray = field(repr=False)
    #: per direction ("up", "down"): {"r2", "rmse" [S], "rmse_rel" (of g_max - g_min), "n"} of the model curve
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    #: how the directions were obtained (and other remarks), one sentence each
    notes: list[str] = field(default_factory=list)
    #: poor fit, inferred directions that the data contradict, ...
    warnings: list[str] = field(default_factory=list)
    #: the measured curve [S], its pulse numbers and the directions used (+1 / -1; 0 for the first row)
    data: np.ndarray | None = field(default=None, repr=False)
    pulses: np.ndarray | None = field(default=None, repr=False)
    directions: np.ndarray | None = field(default=None, repr=False)
    directions_inferred: bool = False
    #: evaluations of the model over all rows (residual vectors) during the fit
    n_evals: int = 0
    #: the fitted parameter vector: g_start, g_min, g_max [S], then the model's shape parameters (neurosim: NL_LTP,
    #: NL_LTD; soft_bounds: alpha_up, alpha_down; linear_step: s_up, s_down, gamma_up, gamma_down (w units))
    fitted_vector: np.ndarray | None = field(default=None, repr=False)
    #: 1-sigma standard errors of the fitted parameters (Gauss-Newton: residual variance x (J^T J)^-1; g_min and
    #: g_max in S, steps s_up / s_down in aihwkit w units), keyed like :attr:`params` where the names agree
    stderr: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- reading
def _csv_error(p: Path, msg: str) -> ValueError:
    return ValueError(f"{p}: {msg}; expected {CSV_EXPECTED}")


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(pulse, conductance_S, direction or None when the CSV has no direction column), validated."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such CSV file")
    text = read_text_file(p, CSV_EXPECTED)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise _csv_error(p, f"not a valid CSV ({e})") from None
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    nonblank = np.nonzero(lens > 0)[0]
    if len(nonblank) == 0:
        raise _csv_error(p, "empty file")
    head = nonblank[0]
    cols = [c.strip() for c in rows[head]]
    if "pulse" not in cols or "conductance_S" not in cols:
        raise ValueError(f"{p}: the CSV needs a header with columns 'pulse' and 'conductance_S' (optional "
                         f"'direction'); found {cols}")
    lines = nonblank[1:]  # row indices of the data (line number = index + 1)
    if len(lines) < 4:
        raise ValueError(f"{p}: at least 4 data rows are needed, found {len(lines)}")
    ip, ig = cols.index("pulse"), cols.index("conductance_S")
    idir = cols.index("direction") if "direction" in cols else None
    need = max(ip, ig) + 1  # a row may leave out an empty direction (the first row: the initial state)
    short = np.nonzero(lens[lines] < need)[0]
    if len(short):
        i = int(lines[short[0]])
        raise ValueError(f"{p}, line {i + 1}: {lens[i]} fields, the header has {len(cols)} ({', '.join(cols)})")
    data = [rows[i] for i in lines.tolist()] if len(lines) != len(rows) - 1 else rows[1:]

    def column(j: int, what: str) -> np.ndarray:
        vals = list(map(itemgetter(j), data))
        try:
            return np.array(vals, dtype=np.float64)
        except ValueError:
            for k, v in enumerate(vals):  # only to name the bad line
                try:
                    float(v)
                except ValueError:
                    raise ValueError(f"{p}, line {int(lines[k]) + 1}: pulse and conductance_S must be numbers, got "
                                     f"{what} = {v.strip()!r}") from None
            raise

    pulses_a, g_a = column(ip, "pulse"), column(ig, "conductance_S")
    dirs = None
    if idir is not None:
        if np.all(lens[lines] > idir):
            vals = list(map(itemgetter(idir), data))
        else:
            vals = [r[idir] if len(r) > idir else "" for r in data]
        raw = np.char.lower(np.char.strip(np.array(vals, dtype=str)))
        uniq, inv = np.unique(raw, return_inverse=True)
        code = np.zeros(len(uniq), dtype=np.int64)
        for k, v in enumerate(uniq):  # the distinct labels, not the rows
            if v in _UP:
                code[k] = 1
            elif v in _DOWN:
                code[k] = -1
            elif v != "":
                i = int(np.nonzero(inv == k)[0][0])
                raise ValueError(f"{p}, line {int(lines[i]) + 1}: direction {v!r} not understood (use up/down or "
                                 "+1/-1)")
        d = code[inv.reshape(-1)]
        if np.all(d[1:] == 0):
            dirs = None  # an empty direction column: as if there were none
        elif np.any(d[1:] == 0):
            raise ValueError(f"{p}: the direction column must be filled for every row after the first")
        else:
            dirs = np.concatenate([[0], d[1:]])
    if not np.all(np.isfinite(g_a)) or np.any(g_a < 0):
        raise ValueError(f"{p}: conductances must be finite and >= 0 S")
    gmax_hi = parameter_range("g_max")[1]
    if g_a.max() > gmax_hi:
        raise ValueError(f"{p}: conductance_S up to {g_a.max():g}: conductances are in siemens and at most "
                         f"{gmax_hi:g} S (a value in uS or nS must be converted to S)")
    if not np.all(np.isfinite(pulses_a)) or np.any(np.diff(pulses_a) <= 0) or \
            np.any(pulses_a != np.round(pulses_a)):
        raise ValueError(f"{p}: 'pulse' must be increasing integers (cumulative pulse number)")
    return pulses_a, g_a, dirs


def _smooth_window(n: int) -> int:
    """Half-width of the moving average used to find the turning point of ``n`` rows."""
    return max(1, n // 50)


def _initial_split(g: np.ndarray) -> tuple[int, int]:
    """(turning row s, half-width h): rows 1..s potentiation, s+1.. depression, s = the maximum of the curve
    smoothed by a centred moving average of 2h + 1 rows (shrinking at the ends)."""
    n = len(g)
    h = _smooth_window(n)
    c = np.concatenate([[0.0], np.cumsum(g - g.mean())])
    i = np.arange(n)
    lo, hi = np.maximum(i - h, 0), np.minimum(i + h + 1, n)
    sm = (c[hi] - c[lo]) / (hi - lo)
    return int(np.argmax(sm)), h


def _split_dirs(n: int, s: int) -> np.ndarray:
    d = np.full(n, -1, dtype=np.int64)
    d[: s + 1] = 1
    d[0] = 0
    return d


def read_pulse_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pulse, conductance_S, direction) arrays; direction[i] in {+1, -1} for the pulses leading to row i
    (direction[0] = 0). Without a direction column: potentiation up to the maximum of the smoothed curve, then
    depression (:func:`fit_csv` refines that turning point with the model)."""
    pulses, g, dirs = _read(path)
    if dirs is None:
        s, _ = _initial_split(g)
        if s == 0:
            raise ValueError(f"{path}: cannot infer directions (the maximum is the first row); add a direction "
                             "column")
        dirs = _split_dirs(len(g), s)
    return pulses, g, dirs


# ---------------------------------------------------------------------- model curves (normalised units, vectorised)
def _ns_a(nl: float, n: int) -> float:
    return ns.a_norm_from_label(round(float(nl), 12)) * n


def _ns_g(p: np.ndarray, a: float, pmax: float, lo: float, hi: float) -> np.ndarray:
    if math.isinf(a):
        return lo + (hi - lo) * p / pmax
    return lo + (hi - lo) * np.expm1(-p / a) / math.expm1(-pmax / a)


def _ns_p(g: np.ndarray, a: float, pmax: float, lo: float, hi: float) -> np.ndarray:
    x = np.clip((g - lo) / max(hi - lo, 1e-300), 0.0, 1.0)
    if math.isinf(a):
        return x * pmax
    v = 1.0 + x * math.expm1(-pmax / a)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(v > 0, -a * np.log(np.where(v > 0, v, 1.0)), pmax)
    return np.clip(p, 0.0, pmax)


def _lin_q(s: float, gamma: float) -> float:
    """The contraction s·gamma of one linear step, capped at 1 (no overshoot past the fixed point)."""
    return min(s * gamma, 1.0)


def _lin_more(w1: np.ndarray, c: float, q: float, m: np.ndarray) -> np.ndarray:
    """m more linear steps w += c - q w from w1 in [-1, 1] (closed form of the affine map; the sequence is monotone,
    so clipping once at the end equals clipping every pulse)."""
    m = np.asarray(m, dtype=np.float64)
    if q >= 1.0:
        f = (m > 0).astype(np.float64)
    elif q < 1e-12:
        f = m
    else:
        f = -np.expm1(m * math.log1p(-q)) / q
    return np.clip(w1 + (c - q * w1) * f, -1.0, 1.0)


def _lin_params(th, d: int) -> tuple[float, float]:
    lo, hi, su, sd, gu, gd = th
    return (su, _lin_q(su, gu)) if d > 0 else (-sd, _lin_q(sd, gd))


def _step_dir(model: str, th, g: np.ndarray, d: int, k: np.ndarray, lv: tuple[int, int]) -> np.ndarray:
    """Conductances after k[i] pulses of direction d from g[i] (deterministic model, normalised units)."""
    if model == "neurosim":
        lo, hi, nl_u, nl_d = th
        n = lv[0] if d > 0 else lv[1]
        a = _ns_a(nl_u if d > 0 else nl_d, n)
        p = np.clip(_ns_p(g, a, n, lo, hi) + (k if d > 0 else -k), 0.0, n)
        return np.clip(_ns_g(p, a, n, lo, hi), lo, hi)
    if model == "soft_bounds":
        lo, hi, au, ad = th
        if d > 0:
            return hi - (hi - g) * (1 - au) ** k
        return lo + (g - lo) * (1 - ad) ** k
    lo, hi = th[0], th[1]
    c, q = _lin_params(th, d)
    w = 2 * (g - lo) / (hi - lo) - 1
    w1 = np.clip(w + c - q * w, -1.0, 1.0)  # the first pulse from a w that may lie outside the bounds
    w = _lin_more(w1, c, q, k - 1)
    return lo + (w + 1) * (hi - lo) / 2


def _step(model: str, th, g: np.ndarray, d: np.ndarray, k: np.ndarray, lv: tuple[int, int]) -> np.ndarray:
    """Conductances after k[i] pulses of direction d[i] (+1 / -1) from g[i], all rows at once."""
    g = np.asarray(g, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    up = np.asarray(d) > 0
    if up.all():
        return _step_dir(model, th, g, 1, k, lv)
    if not up.any():
        return _step_dir(model, th, g, -1, k, lv)
    out = np.empty_like(g)
    out[up] = _step_dir(model, th, g[up], 1, k[up], lv)
    out[~up] = _step_dir(model, th, g[~up], -1, k[~up], lv)
    return out


def _runs(d: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of the runs of equal values of d."""
    change = (np.nonzero(d[1:] != d[:-1])[0] + 1).tolist()
    return list(zip([0] + change, change + [len(d)]))


def _run(model: str, th, g: float, d: int, c: np.ndarray, lv: tuple[int, int]) -> np.ndarray:
    """The model curve over one run of direction d with pulse counts c from g (closed form)."""
    cum = np.cumsum(c, dtype=np.float64)
    if model == "neurosim":
        lo, hi, nl_u, nl_d = th
        n = lv[0] if d > 0 else lv[1]
        a = _ns_a(nl_u if d > 0 else nl_d, n)
        p0 = _ns_p(np.array([g]), a, n, lo, hi)[0]
        return np.clip(_ns_g(np.clip(p0 + (cum if d > 0 else -cum), 0.0, n), a, n, lo, hi), lo, hi)
    if model == "soft_bounds":
        return _step_dir(model, th, np.full(len(c), g), d, cum, lv)
    lo, hi = th[0], th[1]
    first = _step_dir(model, th, np.array([g]), d, c[:1].astype(np.float64), lv)[0]
    cst, q = _lin_params(th, d)
    w1 = 2 * (first - lo) / (hi - lo) - 1
    w = _lin_more(w1, cst, q, cum - cum[0])
    return lo + (w + 1) * (hi - lo) / 2


def _curve(model, th, g0, dirs, counts, lv) -> np.ndarray:
    """The deterministic model curve from g0 over the rows (directions dirs[1:], pulse counts counts[1:])."""
    out = np.empty(len(dirs))
    out[0] = g = g0
    d, c = np.asarray(dirs[1:]), np.asarray(counts[1:])
    for s, e in _runs(d):
        seg = _run(model, th, g, int(d[s]), c[s:e], lv)
        out[1 + s:1 + e] = seg
        g = seg[-1]
    return out


def _first_run(dirs: np.ndarray, counts: np.ndarray, sign: int) -> int:
    """Pulses of the first run of direction ``sign``."""
    idx = np.nonzero(dirs == sign)[0]
    if len(idx) == 0:
        return 0
    i = idx[0]
    other = np.nonzero(dirs[i:] != sign)[0]
    end = i + (int(other[0]) if len(other) else len(dirs) - i)
    return int(counts[i:end].sum())


def _check_levels(levels) -> tuple[int, int] | None:
    if levels is None:
        return None
    vals = (levels, levels) if not isinstance(levels, tuple | list) else tuple(levels)
    if len(vals) != 2:
        raise ValueError(f"levels must be one integer or (potentiation, depression), not {levels!r}")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not MIN_LEVELS <= v <= MAX_LEVELS:
            raise ValueError(f"--levels {v!r}: the number of levels (pulses from G_min to G_max) must be an integer "
                             f"from {MIN_LEVELS} to {MAX_LEVELS}")
    return int(vals[0]), int(vals[1])


# ---------------------------------------------------------------------- the fit
def fit_pulse_response(g: np.ndarray, dirs: np.ndarray | None, model: str, *, pulses: np.ndarray | None = None,
                       levels: tuple[int, int] | int | None = None, name: str = "fitted device",
                       objective: str = "one_step", progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit ``model`` to the measured conductances ``g`` [S] with per-row pulse directions ``dirs`` (see
    :func:`read_pulse_csv`; ``None``: infer one potentiation run then one depression run, the turning point chosen
    by the model, see the module docstring). ``objective``: "one_step" (default; each measured point predicted from
    the previous measured point: consistent for cycle-to-cycle noise, which makes a single device's curve a random
    walk) or "trajectory" (the whole model curve from a fitted start against the data: best for averaged, low-noise
    curves). ``levels``: an integer >= 2 (or a pair: potentiation, depression), default the pulses of the first run
    of each direction. ``progress``: called with a line of text every few seconds of a long fit. Returns the fitted
    :class:`DeviceCard`, the parameters and the quality of the fit (see :class:`FitResult`)."""
    if model not in FIT_MODELS:
        raise ValueError(f"fit model must be one of {', '.join(FIT_MODELS)}, not {model!r}")
    if objective not in ("one_step", "trajectory"):
        raise ValueError(f"objective must be 'one_step' or 'trajectory', not {objective!r}")
    lv_fixed = _check_levels(levels)
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 1 or len(g) < 4:
        raise ValueError(f"at least 4 measured points are needed, found {g.size}")
    pulses_a = np.arange(len(g), dtype=np.float64) if pulses is None else np.asarray(pulses, dtype=np.float64)
    counts = np.concatenate([[0.0], np.diff(pulses_a)])
    lo_d, hi_d = float(g.min()), float(g.max())
    scale = hi_d - lo_d
    if not scale > 0:
        raise ValueError("the measured conductance is constant; nothing to fit")
    gn = (g - lo_d) / scale  # normalised data
    prev, cur, cnt = gn[:-1], gn[1:], counts[1:]

    t0 = time.monotonic()
    state = {"evals": 0, "last": t0, "stage": "fit"}

    def tick() -> None:
        state["evals"] += 1
        if progress is not None:
            now = time.monotonic()
            if now - state["last"] >= PROGRESS_EVERY_S:
                state["last"] = now
                progress(f"fit: {state['stage']}, {state['evals']} model evaluations over {len(g)} rows, "
                         f"{now - t0:.0f} s")

    def levels_of(d: np.ndarray) -> tuple[int, int]:
        return lv_fixed or (_first_run(d, counts, 1), _first_run(d, counts, -1))

    def check_lv(lv: tuple[int, int]) -> None:
        if model == "neurosim" and (lv[0] < 1 or lv[1] < 1):
            raise ValueError("the neurosim fit needs both a potentiation and a depression run (or levels=...)")
        for v, what in zip(lv, ("potentiation", "depression")):
            if model == "neurosim" and v > MAX_LEVELS:
                raise ValueError(f"the {what} run has {v} pulses: more than {MAX_LEVELS} levels; give --levels")

    if model == "neurosim":
        lb, ub = [-0.5, -0.5, 0.5, -9, -9], [1.5, 0.5, 1.5, 9, 9]
    elif model == "soft_bounds":
        lb, ub = [-0.5, -5.0, 0.5, 1e-7, 1e-7], [1.5, 0.5, 6.0, 0.999, 0.999]
    else:
        lb, ub = [-0.5, -0.5, 0.5, 1e-6, 1e-6, 0.0, 0.0], [1.5, 0.5, 1.5, 1.0, 1.0, 10.0, 10.0]
    lb_a, ub_a = np.asarray(lb, dtype=float), np.asarray(ub, dtype=float)

    def starts(lv: tuple[int, int]) -> list[list[float]]:
        if model == "neurosim":
            return [[gn[0], 0.0, 1.0, u, d] for u, d in ((1, -1), (1, 1), (-1, -1), (-1, 1))]
        if model == "soft_bounds":
            return [[gn[0], 0.0, 1.0, a, a] for a in (0.005, 0.02, 0.1)]
        n_up = max(lv[0], 1)
        return [[gn[0], 0.0, 1.0, 2.0 / n_up, 2.0 / n_up, gam, gam] for gam in (0.0, 0.3, 0.8)]

    def fit(d: np.ndarray, lv: tuple[int, int], obj: str, x0s: list) -> np.ndarray:
        dd = d[1:]

        def resid(x: np.ndarray) -> np.ndarray:
            tick()
            if obj == "trajectory":
                return _curve(model, x[1:], x[0], d, counts, lv) - gn
            return _step(model, x[1:], prev, dd, cnt, lv) - cur

        def solve(x0: np.ndarray, max_nfev: int):
            x0 = np.clip(np.asarray(x0, dtype=float), lb_a + 1e-9, ub_a - 1e-9)
            return least_squares(resid, x0, bounds=(lb_a, ub_a), x_scale="jac", diff_step=1e-6, max_nfev=max_nfev)

        if len(x0s) == 1:
            return solve(x0s[0], 2000)
        # several starts: a short run from each, then the best one to convergence
        runs = [solve(x0, _SCREEN_NFEV) for x0 in x0s]
        best = min(runs, key=lambda r: r.cost)
        return best if best.status > 0 else solve(best.x, 2000)

    notes: list[str] = []
    warnings: list[str] = []
    inferred = dirs is None
    if not inferred:
        dirs = np.asarray(dirs)
        if dirs.shape != g.shape:
            raise ValueError(f"dirs must have one entry per row ({len(g)}), not shape {dirs.shape}")
    # a long curve: the multi-start fit (and the turning point) first on an evenly thinned subset of the rows (the
    # pulse numbers keep the gaps), then from there on all rows
    x_init, s_init = None, None
    if len(g) > SUBSET_ROWS:
        idx = np.unique(np.linspace(0, len(g) - 1, SUBSET_ROWS).round().astype(np.int64))
        sub_dirs = None
        if not inferred:
            sub_dirs = dirs[idx].copy()
            sub_dirs[0] = 0
        state["stage"] = f"first on {len(idx)} of the {len(g)} rows"
        sub = fit_pulse_response(g[idx], sub_dirs, model, pulses=pulses_a[idx], levels=lv_fixed, name=name,
                                 objective=objective, progress=progress)
        state["evals"] += sub.n_evals
        v = sub.fitted_vector
        x_init = np.concatenate([(v[:3] - lo_d) / scale, v[3:]])
        if inferred:
            last_up = int(np.nonzero(sub.directions == 1)[0][-1])
            s_init = int(np.searchsorted(pulses_a, sub.pulses[last_up]))
        notes.append(f"first fitted to {len(idx)} evenly spaced rows of the {len(g)}, then to all rows")
    if inferred:
        s0, h = _initial_split(g)
        if s0 == 0:
            raise ValueError("cannot infer directions (the maximum is the first row); add a direction column")
        if s0 == len(g) - 1:
            raise ValueError("cannot infer directions (the maximum is the last row: no depression run); add a "
                             "direction column")
        # alternate: fit the model at a turning point, move the turning point to the row where that model's one-step
        # residuals are smallest (per-row residuals of both labels, cumulated: every split at once), until it stays
        state["stage"] = "finding the turning point"
        tried: dict[int, tuple[object, tuple[int, int]]] = {}
        s, x_prev = (s0, None) if s_init is None else (s_init, x_init)
        ones = np.ones(len(cur))
        for _ in range(_MAX_SPLIT_ROUNDS):
            d = _split_dirs(len(g), s)
            lv = levels_of(d)
            check_lv(lv)
            r = fit(d, lv, "one_step", starts(lv) if x_prev is None else [x_prev])
            tried[s] = (r, lv)
            x_prev = r.x
            th = r.x[1:]
            e_up = np.concatenate([[0.0], np.cumsum((_step(model, th, prev, ones, cnt, lv) - cur) ** 2)])
            e_dn = np.concatenate([[0.0], np.cumsum((_step(model, th, prev, -ones, cnt, lv) - cur) ** 2)])
            cost = e_up[1:-1] + (e_dn[-1] - e_dn[1:-1])  # split at rows 1 .. n-2
            s_new = int(np.argmin(cost)) + 1
            tick()
            if s_new in tried:
                break
            s = s_new
        s = min(tried, key=lambda k: tried[k][0].cost)
        dirs = _split_dirs(len(g), s)
        first = (f"the maximum of the curve smoothed over {2 * h + 1} rows (row {s0 + 1})" if s_init is None else
                 f"the turning point of the fit to the thinned rows (row {s_init + 1})")
        how = (f"directions inferred (the CSV has no direction column): one potentiation run then one depression "
               f"run, turning after data row {s + 1} of {len(g)} (pulse {pulses_a[s]:g}, G = {g[s]:.4g} S); first "
               f"taken at {first}, then moved to where the fitted model's one-step residuals are smallest "
               f"({len(tried)} fits). Add a direction column (up/down) to set the directions yourself")
        notes.insert(0, how)
    else:
        notes.insert(0, "directions from the direction column")
    lv = levels_of(dirs)
    check_lv(lv)
    n_runs = len(_runs(dirs[1:]))
    if objective == "trajectory" and n_runs > MAX_TRAJECTORY_RUNS:
        raise ValueError(f"the directions change {n_runs - 1} times: the trajectory objective follows the curve run by "
                         f"run and allows at most {MAX_TRAJECTORY_RUNS} runs; use the one_step objective")
    state["stage"] = "fitting"
    if inferred and objective == "one_step":
        best = tried[s][0]  # already fitted at this turning point
    else:
        best = fit(dirs, lv, objective, starts(lv) if x_init is None else [x_init])
    x = best.x.copy()
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
    one = cnt == 1
    sgn_a = dirs[1:][one]
    p_prev, p_cur = prev[one], cur[one]
    pred = _step(model, th, p_prev, sgn_a, np.ones(len(p_prev)), lv)
    keep = (np.minimum(pred, p_cur) > lo_n + eps) & (np.maximum(pred, p_cur) < hi_n - eps)
    res_a, steps_a, sgn_a = (p_cur - pred)[keep], (pred - p_prev)[keep], sgn_a[keep]
    params: dict[str, float] = {"g_min": g_min, "g_max": g_max, "g_start": lo_d + x[0] * scale}
    rng = th[1] - th[0]
    try:
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
                su, sd = float(th[2]), float(th[3])
                gu, gd = _lin_q(su, float(th[4])) / su, _lin_q(sd, float(th[5])) / sd  # gamma capped at 1/s
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
    except DeviceCardError as e:
        raise ValueError(f"the fitted {model} card is outside the allowed ranges ({e}): the model does not "
                         "describe these data") from None

    # quality per direction: the model curve (as drawn) against the data
    quality: dict[str, dict[str, float]] = {}
    for sign, label in ((1, "up"), (-1, "down")):
        m = dirs == sign
        if m.sum() < 2:
            continue
        r = curve_n[m] - gn[m]
        ss_tot = float(np.sum((gn[m] - gn[m].mean()) ** 2))
        r2 = 1.0 - float(np.sum(r ** 2)) / ss_tot if ss_tot > 0 else float("nan")
        rm = float(np.sqrt(np.mean(r ** 2)))
        quality[label] = {"r2": r2, "rmse": rm * scale, "rmse_rel": float(rm / rng), "n": int(m.sum())}
        if not (r2 >= POOR_R2) or rm / rng > POOR_RMSE:
            warnings.append(
                f"poor fit of the {'potentiation' if sign > 0 else 'depression'} ({label}) points: the {model} model "
                f"curve explains R^2 = {r2:.3g} of their variance (RMSE {100 * rm / rng:.3g}% of the fitted "
                f"conductance range; poor below R^2 = {POOR_R2:g} or above {100 * POOR_RMSE:g}%): the data may be "
                "too noisy for this model, another model may fit better"
                + ("; the directions were inferred, add a direction column to set them" if inferred else ""))
    # parameter uncertainties (one-step residuals of cycle-to-cycle noise are independent: calibrated; the
    # trajectory's residuals are correlated: a lower bound)
    stderr: dict[str, float] = {}
    jac = np.asarray(best.jac, dtype=np.float64)
    dof = jac.shape[0] - (jac.shape[1] - (1 if objective == "one_step" else 0))
    if dof > 0 and np.all(np.isfinite(jac)):
        cov = (2.0 * best.cost / dof) * np.linalg.pinv(jac.T @ jac)
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        names = {"neurosim": ("g_min", "g_max", "nl_ltp", "nl_ltd"),
                 "soft_bounds": ("g_min", "g_max", "s_up", "s_down"),
                 "linear_step": ("g_min", "g_max", "s_up", "s_down", "gamma_up", "gamma_down")}[model]
        for i, k in enumerate(names):
            stderr[k] = float(se[i + 1] * (scale if k in ("g_min", "g_max") else 1.0))
        if objective == "trajectory":
            notes.append("the +- of the trajectory objective are a lower bound (its residuals are correlated)")
        for k in ("nl_ltp", "nl_ltd", "gamma_up", "gamma_down"):
            if stderr.get(k, 0.0) > MAX_LABEL_STDERR:
                warnings.append(f"{k} = {params[k]:.3g} +- {stderr[k]:.2g} (1 sigma): the data do not pin it down "
                                f"(more than +-{MAX_LABEL_STDERR:g}); measure more pulses, or average several "
                                "devices / cycles")
        for k, j in (("s_up", 2), ("s_down", 3)):
            if model != "neurosim" and stderr.get(k, 0.0) > MAX_STEP_REL_STDERR * abs(float(th[j])):
                warnings.append(f"the {k[2:]} step is uncertain: {float(th[j]):.3g} +- {stderr[k]:.2g} w (1 sigma, "
                                f"more than {100 * MAX_STEP_REL_STDERR:g}%)")
    return FitResult(card=card, params=params, rmse=rmse, n_points=len(g), model_curve=lo_d + curve_n * scale,
                     quality=quality, notes=notes, warnings=warnings, data=g, pulses=pulses_a, directions=dirs,
                     directions_inferred=inferred, n_evals=state["evals"], stderr=stderr,
                     fitted_vector=np.concatenate([lo_d + x[:3] * scale, x[3:]]))


def fit_csv(path: str | os.PathLike, model: str, *, levels: int | tuple[int, int] | None = None,
            name: str | None = None, objective: str = "one_step",
            progress: Callable[[str], None] | None = None) -> FitResult:
    """Read a pulse-response CSV (see :func:`read_pulse_csv`) and fit ``model`` to it (directions inferred by the
    fit when the CSV has no direction column)."""
    if model not in FIT_MODELS:
        raise ValueError(f"fit model must be one of {', '.join(FIT_MODELS)}, not {model!r}")
    _check_levels(levels)
    pulses, g, dirs = _read(path)
    try:
        res = fit_pulse_response(g, dirs, model, pulses=pulses, levels=levels, name=name or Path(path).stem,
                                 objective=objective, progress=progress)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    src = f"fit of {Path(path).name} ({res.n_points} points, rmse {res.rmse:.3g} S) by neuromorph device fit"
    return replace(res, card=replace(res.card, source=src))


# ---------------------------------------------------------------------- figure
def plot_fit(res: FitResult, out: str | os.PathLike, *, title: str = "", max_points: int = 20000) -> Path:
    """Draw the measured points (coloured by direction) and the fitted model curve into ``out`` (PNG, Agg; at most
    ``max_points`` points drawn, evenly thinned), with R² per direction in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if res.data is None:
        raise ValueError("the fit result has no data to draw")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        out = out.with_suffix(".png")
    n = len(res.data)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64))
    x, g, curve, d = res.pulses[idx], res.data[idx], res.model_curve[idx], res.directions[idx]
    scale, unit = 1.0, "S"
    for f, u in ((1e-12, "pS"), (1e-9, "nS"), (1e-6, "\u00b5S"), (1e-3, "mS")):
        if max(float(res.data.max()), res.card.g_max) < f * 1000:
            scale, unit = f, u
            break
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for sign, label, col in ((1, "up", "C0"), (-1, "down", "C3")):
        m = d == sign
        if sign == 1:
            m = m | (d == 0)
        q = res.quality.get(label)
        extra = f", R\u00b2 = {q['r2']:.3f}" if q else ""
        ax.plot(x[m], g[m] / scale, ".", ms=2.5, color=col, alpha=0.6,
                label=f"measured, {'potentiation' if sign > 0 else 'depression'}{extra}")
    ax.plot(x, curve / scale, "-", color="k", lw=1.2, label=f"fitted {res.card.model} model")
    for v in (res.card.g_min, res.card.g_max):
        ax.axhline(v / scale, color="0.5", lw=0.7, ls=":")
    if res.directions_inferred:
        turn = np.nonzero(res.directions == -1)[0]
        if len(turn):
            ax.axvline(res.pulses[turn[0] - 1], color="0.4", lw=0.8, ls="--", label="inferred turning point")
    ax.set_xlabel("pulse number")
    ax.set_ylabel(f"conductance G ({unit})")
    ax.set_title(title or f"{res.card.name}: {res.card.model} fit ({res.n_points} points)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as e:
        raise ValueError(f"{out}: cannot write the figure ({e.strerror or e})") from None
    return out
