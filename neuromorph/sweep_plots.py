"""Figures of a sweep's results table (``neuromorph plot RESULTS.sqlite``), PNG and SVG.

* ``accuracy_vs_<axis>``: final test accuracy against each swept parameter, mean ± std over seeds, one line per
  combination of the other axes (their mean when there are more than 8), the ideal reference as a line (mean over
  its seeds; a band of ± std);
* ``heatmap``: mean final test accuracy over the grid of two axes (a sweep with exactly two);
* ``learning_curves``: test accuracy per epoch of every point (mean ± std over seeds), the reference dashed;
* ``cost_vs_accuracy``: programming pulses and energy of training against the final test accuracy.

Axis labels carry units: device parameters from the card specs (:data:`neuromorph.devices.cards.PARAMETERS`),
hardware keys from their names (``_bits``, ``_ohm``, ``_s``, ...). Only runs with ``status = "done"`` are drawn.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .plots import _save  # noqa: E402
from .sweep import read_results  # noqa: E402

__all__ = ["plot_sweep", "axis_label"]

_HW_UNITS = {"adc_range": "weight units", "w_max": "weight units", "manhattan_threshold": "weight units",
             "refresh_threshold": "fraction of the range", "tile_rows": "rows", "tile_cols": "columns",
             "rtol": "", "atol": "", "settle_tol": ""}
_SUFFIX_UNITS = {"_bits": "bits", "_ohm": "Ω", "_farad": "F", "_volt": "V", "_siemens": "S", "_tau": "τ",
                 "_s": "s"}
_CANON = {"range": "fraction of G range", "g_max": "fraction of G_max", "1": "", "levels": "levels"}
_MAX_LINES = 8


def axis_label(key: str) -> str:
    """``"max_pulses (levels)"``: the parameter and its unit."""
    section, name = key.split(".", 1)
    unit = ""
    if section == "device":
        from .devices.cards import PARAMETERS
        from .devices.units import canonical_unit

        spec = PARAMETERS.get(name)
        if spec is not None and spec.kind != "bool":
            unit = _CANON.get(canonical_unit(spec.kind), canonical_unit(spec.kind))
        return f"device {name}" + (f" ({unit})" if unit else "")
    if section == "hardware":
        unit = _HW_UNITS.get(name, next((u for s, u in _SUFFIX_UNITS.items() if name.endswith(s)), ""))
    return key + (f" ({unit})" if unit else "")


def _short(key: str) -> str:
    return key.split(".", 1)[1]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, list | dict | bool) else str(v)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def _numeric(values) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _key(v) -> str:
    return json.dumps(v, sort_keys=True)


class _Table:
    """The done runs of a sweep grouped by point, with the references they compare to."""

    def __init__(self, meta: dict, rows: list[dict]):
        self.name = meta.get("name") or "sweep"
        self.axes = [(k, list(v)) for k, v in meta.get("axes", [])]
        self.keys = [k for k, _ in self.axes]
        self.hw_keys = {k for k in self.keys if k.startswith(("device.", "hardware."))}
        self.failed = sum(r["status"] == "failed" for r in rows)
        done = [r for r in rows if r["status"] == "done"]
        self.points: dict[str, list[dict]] = {}
        self.refs: dict[str, list[dict]] = {}
        for r in done:
            (self.points if r["kind"] == "hardware" else self.refs).setdefault(
                _key({k: r["params"].get(k) for k in self.keys} if r["kind"] == "hardware" else r["params"]),
                []).append(r)
        if not self.points:
            raise ValueError("the results table has no finished hardware run to plot"
                             + (f" ({self.failed} failed)" if self.failed else ""))
        self.seeds = max(len(v) for v in self.points.values())

    def params(self, pkey: str) -> dict:
        return json.loads(pkey)

    def ref_of(self, params: dict) -> list[dict]:
        return self.refs.get(_key({k: v for k, v in params.items() if k not in self.hw_keys}), [])

    def acc(self, runs: list[dict]) -> tuple[float, float]:
        a = 100 * np.array([r["test_acc"] for r in runs], dtype=float)
        return float(a.mean()), float(a.std())

    def caption(self) -> str:
        fail = f", {self.failed} failed runs left out" if self.failed else ""
        return f"{self.name}: mean ± std over {self.seeds} seed{'s' * (self.seeds > 1)}{fail}"


def _x_positions(ax, key: str, values: list) -> dict:
    """Value -> x coordinate; numeric axes on a (log) scale, others categorical."""
    if _numeric(values):
        pos = {_key(v): float(v) for v in values}
        vals = [float(v) for v in values]
        if min(vals) > 0 and max(vals) / min(vals) >= 16:
            ax.set_xscale("log", base=2 if all(float(v).is_integer() and math.log2(v).is_integer() for v in vals)
                          else 10)
        ax.set_xticks(vals, [_fmt(v) for v in values])
        ax.minorticks_off()
    else:
        pos = {_key(v): float(i) for i, v in enumerate(values)}
        ax.set_xticks(range(len(values)), [_fmt(v) for v in values])
    ax.set_xlabel(axis_label(key))
    return pos


def _combo_label(combo: dict) -> str:
    return ", ".join(f"{_short(k)} = {_fmt(v)}" for k, v in combo.items())


def _plot_vs_axis(t: _Table, key: str, values: list, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    pos = _x_positions(ax, key, values)
    others = [k for k in t.keys if k != key]
    lines: dict[str, dict[str, list[dict]]] = {}
    for pkey, runs in t.points.items():
        p = t.params(pkey)
        combo = _key({k: p[k] for k in others})
        lines.setdefault(combo, {}).setdefault(_key(p[key]), []).extend(runs)
    merged = len(lines) > _MAX_LINES
    if merged:  # the mean over the other axes (and seeds)
        by_value: dict[str, list[dict]] = {}
        for by_x in lines.values():
            for xk, runs in by_x.items():
                by_value.setdefault(xk, []).extend(runs)
        lines = {_key({"mean over": ", ".join(map(_short, others))}): by_value}
    all_refs = [u for v in t.refs.values() for u in v]
    ref_lines = {}
    for i, (combo, by_x) in enumerate(lines.items()):
        xs = sorted(by_x, key=lambda xk: pos[xk])
        stats = [t.acc(by_x[xk]) for xk in xs]
        ax.errorbar([pos[xk] for xk in xs], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", ms=4,
                    capsize=3, color=f"C{i}", label=_combo_label(json.loads(combo)) or "hardware")
        refs = []
        for xk in xs:
            r = all_refs if merged else t.ref_of({**json.loads(combo), key: json.loads(xk)})
            refs.append((pos[xk], tuple(sorted(x["run_id"] for x in r)), r))
        ref_lines[combo] = (i, refs)
    distinct = {ids for _, refs in ref_lines.values() for _, ids, _ in refs if ids}
    if len(distinct) == 1:  # one reference for the whole figure: a horizontal line
        r = next(r for _, refs in ref_lines.values() for _, ids, r in refs if ids)
        m, s = t.acc(r)
        ax.axhline(m, color="k", ls="--", lw=1.2, label=f"ideal reference ({len(r)} seed{'s' * (len(r) > 1)})")
        if s > 0:
            ax.axhspan(m - s, m + s, color="k", alpha=0.08, lw=0)
    else:
        for i, refs in ref_lines.values():
            pts = [(x, t.acc(r)[0]) for x, ids, r in refs if ids]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", ls="--", lw=1, alpha=0.8)
        ax.plot([], [], color="k", ls="--", lw=1, label="ideal reference (dashed, same color)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(t.caption(), fontsize=9)
    return _save(fig, out / f"accuracy_vs_{_slug(key)}.png")


def _plot_heatmap(t: _Table, out: Path) -> Path:
    (kx, vx), (ky, vy) = t.axes
    mean = np.full((len(vy), len(vx)), np.nan)
    std = np.full_like(mean, np.nan)
    ix = {_key(v): i for i, v in enumerate(vx)}
    iy = {_key(v): i for i, v in enumerate(vy)}
    for pkey, runs in t.points.items():
        p = t.params(pkey)
        mean[iy[_key(p[ky])], ix[_key(p[kx])]], std[iy[_key(p[ky])], ix[_key(p[kx])]] = t.acc(runs)
    fig, ax = plt.subplots(figsize=(max(5.6, 2.4 + 0.8 * len(vx)), max(4.0, 1.8 + 0.6 * len(vy))), dpi=120)
    im = ax.imshow(mean, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(vx)), [_fmt(v) for v in vx])
    ax.set_yticks(range(len(vy)), [_fmt(v) for v in vy])
    ax.set_xlabel(axis_label(kx))
    ax.set_ylabel(axis_label(ky))
    finite = mean[np.isfinite(mean)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (j, i), m in np.ndenumerate(mean):
        if np.isfinite(m):
            ax.text(i, j, f"{m:.1f}\n±{std[j, i]:.1f}", ha="center", va="center", fontsize=7,
                    color="w" if m < mid else "k")
    refs = [r for v in t.refs.values() for r in v]
    ref = f"\nideal reference {t.acc(refs)[0]:.1f} %" if refs and len(t.refs) == 1 else ""
    fig.colorbar(im, ax=ax, label="final test accuracy (%)")
    ax.set_title(t.caption() + ref, fontsize=8)
    return _save(fig, out / "heatmap.png")


def _curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(r["history"]) for r in runs)
    a = 100 * np.array([[h["test_acc"] for h in r["history"][:n]] for r in runs], dtype=float)
    return np.arange(1, n + 1), a.mean(0), a.std(0)


def _plot_learning_curves(t: _Table, out: Path) -> Path:
    panel_key, panel_vals = (t.axes[-1] if len(t.axes) >= 2 and len(t.axes[-1][1]) <= 6 else (None, [None]))
    fig, axs = plt.subplots(1, len(panel_vals), figsize=(4.2 * len(panel_vals) + 1, 4.2), dpi=120, squeeze=False,
                            sharey=True)
    for ax, pv in zip(axs[0], panel_vals):
        pts = [(pk, runs) for pk, runs in t.points.items()
               if panel_key is None or _key(t.params(pk)[panel_key]) == _key(pv)]
        cmap = plt.get_cmap("viridis", max(len(pts), 2))
        for i, (pk, runs) in enumerate(pts):
            p = {k: v for k, v in t.params(pk).items() if k != panel_key}
            ep, m, s = _curve(runs)
            ax.plot(ep, m, color=cmap(i), marker="o" if len(ep) < 12 else None, ms=3,
                    label=_combo_label(p) or "hardware")
            if len(runs) > 1:
                ax.fill_between(ep, m - s, m + s, color=cmap(i), alpha=0.12, lw=0)
        seen = set()
        for pk, _ in pts:
            r = t.ref_of(t.params(pk))
            ids = tuple(sorted(x["run_id"] for x in r))
            if r and ids not in seen:
                seen.add(ids)
                ep, m, _ = _curve(r)
                ax.plot(ep, m, color="k", ls="--", lw=1.2, label="ideal reference" if len(seen) == 1 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if panel_key is not None:
            ax.set_title(f"{_short(panel_key)} = {_fmt(pv)}", fontsize=9)
        if pts:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    axs[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(t.caption(), fontsize=9)
    return _save(fig, out / "learning_curves.png")


def _plot_cost(t: _Table, out: Path) -> Path:
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2), dpi=120)
    first = t.axes[0] if t.axes else None
    second = t.axes[1] if len(t.axes) > 1 and len(t.axes[1][1]) <= 6 else None
    markers = "osD^v<>p"
    for ax, col, label in ((axs[0], "pulses", "programming pulses in training"),
                           (axs[1], "energy_J", "energy of training (pulses + reads) (J)"),
                           (axs[2], "energy_per_sample_J", "energy per training sample, cost model (J)")):
        drawn, front = False, []
        for pk, runs in t.points.items():
            p = t.params(pk)
            vals = np.array([r.get(col) for r in runs if r.get(col) is not None], dtype=float)
            if not len(vals) or not np.all(vals > 0):
                continue
            m, s = t.acc(runs)
            ci = first[1].index(p[first[0]]) if first else 0
            mi = second[1].index(p[second[0]]) if second else 0
            ax.errorbar(vals.mean(), m, xerr=vals.std(), yerr=s, fmt=markers[mi % len(markers)], ms=5, capsize=2,
                        color=plt.get_cmap("viridis", max(len(first[1]) if first else 1, 2))(ci))
            drawn = True
            front.append((float(vals.mean()), m))
        if drawn:
            ax.set_xscale("log")
        if drawn and col == "energy_per_sample_J":  # the Pareto front: no other point is cheaper and as accurate
            pts = pareto_front(front)
            ax.step([e for e, _ in pts], [a for _, a in pts], where="post", color="k", lw=1, alpha=0.6,
                    label="Pareto front")
            ax.legend(fontsize=7, loc="lower right")
        if not drawn:
            why = {"energy_J": "no values > 0\n(the card has no energy per pulse / read?)", "pulses": "no pulses",
                   "energy_per_sample_J": "no cost-model energy\n(runs written before the cost model)"}[col]
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles = []
    if first:
        cmap = plt.get_cmap("viridis", max(len(first[1]), 2))
        handles += [plt.Line2D([], [], color=cmap(i), marker="o", ls="", label=f"{_short(first[0])} = {_fmt(v)}")
                    for i, v in enumerate(first[1])]
    if second:
        handles += [plt.Line2D([], [], color="gray", marker=markers[i % len(markers)], ls="",
                               label=f"{_short(second[0])} = {_fmt(v)}") for i, v in enumerate(second[1])]
    if handles:
        axs[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(t.caption() + " (both axes)", fontsize=9)
    return _save(fig, out / "cost_vs_accuracy.png")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(cost, accuracy)`` points no other point beats on both (lower or equal cost and higher or equal
    accuracy, one strictly), sorted by cost."""
    best, out = -math.inf, []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            out.append((c, a))
            best = a
    return out


def plot_sweep(results: str | Path, out: str | Path) -> list[Path]:
    """Every figure of a results table into ``out`` (PNG + SVG); returns the PNG paths."""
    meta, rows = read_results(results)
    t = _Table(meta, rows)
    out = Path(out)
    paths = [_plot_vs_axis(t, k, v, out) for k, v in t.axes]
    if len(t.axes) == 2 and meta.get("mode", "grid") == "grid":
        paths.append(_plot_heatmap(t, out))
    paths.append(_plot_learning_curves(t, out))
    paths.append(_plot_cost(t, out))
    return paths
