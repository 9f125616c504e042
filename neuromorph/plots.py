"""Figures from run directories: learning curves (the paper's Fig. 3/4) and weight alignment angles (Fig. 6).

A run directory is what :class:`~neuromorph.train.Trainer` writes: ``metrics.jsonl`` (one JSON object per
epoch) and ``config.toml``. Runs with the same label (several seeds of one recipe) are averaged per epoch,
with a ±1 standard deviation band (numpy's ``std``, ``ddof=0``) when a group has two runs or more.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

__all__ = ["Run", "read_run", "group_runs", "curve_summary", "plot_learning_curves", "plot_curves",
           "angle_summary", "plot_angles"]

METRICS = "metrics.jsonl"


@dataclass
class Run:
    """One run directory: its config name, learning rule and per-epoch metrics."""

    dir: Path
    name: str
    rule: str
    history: list[dict]


def read_run(run_dir: str | Path) -> Run:
    """Read ``metrics.jsonl`` (and ``config.toml`` for the name and rule) of a run directory.

    Raises ValueError naming the file when the metrics are missing, empty or not JSON lines.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist (not a run directory, or the run has not started)")
    history = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {i} is not JSON: {e}") from None
    if not history:
        raise ValueError(f"{str(path)!r} is empty: no epoch finished yet")
    for i, h in enumerate(history, start=1):
        missing = [k for k in ("epoch", "train_acc", "test_acc") if k not in h]
        if missing:
            raise ValueError(f"{str(path)!r} record {i} lacks {', '.join(missing)}")
    name, rule = run_dir.name, "ep"
    cfg_path = run_dir / "config.toml"
    if cfg_path.is_file():
        try:
            cfg = tomllib.loads(cfg_path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{str(cfg_path)!r} is not valid TOML: {e}") from None
        name = str(cfg.get("name", name))
        rule = str(cfg.get("ep", {}).get("rule", rule))
    return Run(run_dir, name, rule, history)


def group_runs(runs: list[Run], label_by: str = "name") -> dict[str, list[Run]]:
    """Runs grouped by config ``name`` (seeds of one recipe together) or by directory, in first-seen order."""
    if label_by not in ("name", "dir"):
        raise ValueError(f"label_by = {label_by!r}; choose 'name' or 'dir'")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.name if label_by == "name" else str(r.dir), []).append(r)
    return groups


def _mean_std(histories: list[list[dict]], value) -> dict:
    """Per-epoch mean and std of ``value(record)`` over the epochs every history has."""
    per_run = [{h["epoch"]: value(h) for h in hist} for hist in histories]
    epochs = sorted(set.intersection(*(set(r) for r in per_run)))
    if not epochs:
        raise ValueError(f"{len(histories)} runs of one group share no epoch; plot them with --label-by dir")
    data = np.array([[r[e] for e in epochs] for r in per_run], dtype=float)
    return {"epochs": np.array(epochs), "mean": data.mean(0), "std": data.std(0), "n": len(histories)}


def curve_summary(histories: dict[str, list[dict] | list[list[dict]]]) -> dict[str, dict]:
    """``{label: {"test": {...}, "train": {...}}}``: error (%) per epoch, mean and std over the label's runs.

    A value of ``histories`` is one run's history (a list of epoch records) or a list of them (seeds).
    Each ``{...}`` has ``epochs``, ``mean``, ``std`` (numpy arrays) and ``n`` (runs); only the
    epochs every run of the group has reached are kept.
    """
    out = {}
    for label, hist in histories.items():
        runs = hist if hist and isinstance(hist[0], list) else [hist]
        out[label] = {split: _mean_std(runs, lambda h, k=f"{split}_acc": 100 * (1 - h[k]))
                      for split in ("test", "train")}
    return out


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


def _line_band(ax, s: dict, **kw) -> None:
    ax.plot(s["epochs"], s["mean"], **kw)
    if s["n"] >= 2:
        ax.fill_between(s["epochs"], s["mean"] - s["std"], s["mean"] + s["std"], color=kw.get("color"),
                        alpha=0.15, lw=0)


def plot_learning_curves(histories: dict[str, list[dict] | list[list[dict]]], path: str | Path,
                         title: str = "") -> Path:
    """Error rate (%) per epoch: test solid, train dashed, one color per label. Writes PNG (and SVG).

    A label with several runs (a list of histories) is drawn as the mean with a ±1 std band.
    """
    summary = curve_summary(histories)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, (label, s) in enumerate(summary.items()):
        n = s["test"]["n"]
        tag = f"{label}, mean ± std of {n} runs" if n > 1 else label
        _line_band(ax, s["test"], color=f"C{i}", label=f"{tag} (test)")
        _line_band(ax, s["train"], color=f"C{i}", ls="--", alpha=0.8, label=f"{tag} (train)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_curves(run_dirs: list[str | Path], path: str | Path, label_by: str = "name",
                title: str = "") -> tuple[Path, dict[str, dict]]:
    """Learning curves of run directories, runs with the same label averaged (Fig. 3/4).

    Returns the figure's path and :func:`curve_summary` of the groups.
    """
    groups = group_runs([read_run(d) for d in run_dirs], label_by)
    histories = {label: [r.history for r in runs] for label, runs in groups.items()}
    return plot_learning_curves(histories, path, title), curve_summary(histories)


RULE_STYLE = {"kp_vf": "-", "vf": "--"}


def angle_summary(runs: list[Run]) -> list[dict]:
    """Angle (degrees) per layer and epoch, mean and std over ``runs``; one dict per synapse layer 2…N.

    Raises ValueError for a run without ``angles`` (not a unidirectional network).
    """
    for r in runs:
        bad = [h["epoch"] for h in r.history if not h.get("angles")]
        if bad:
            raise ValueError(f"{str(r.dir / METRICS)!r} has no 'angles' (epoch {bad[0]}): not a unidirectional "
                             "run (model.unidirectional = true, ep.rule = \"vf\" or \"kp_vf\")")
    n_layers = {len(h["angles"]) for r in runs for h in r.history}
    if len(n_layers) != 1:
        raise ValueError(f"runs {[str(r.dir) for r in runs]} log different numbers of angles: {sorted(n_layers)}")
    return [_mean_std([r.history for r in runs], lambda h, k=k: h["angles"][k]) for k in range(n_layers.pop())]


def plot_angles(run_dirs: list[str | Path], path: str | Path, label_by: str = "name",
                title: str = "") -> tuple[Path, dict[str, list[dict]]]:
    """Angle between forward and backward weights per layer vs epoch (App. G, Fig. 6).

    One color per layer; solid lines for ``ep.rule = "kp_vf"``, dashed for ``"vf"`` (dotted otherwise);
    runs with the same label are averaged with a ±1 std band. Returns the path and the per-group summary.
    """
    groups = group_runs([read_run(d) for d in run_dirs], label_by)
    summary = {label: angle_summary(runs) for label, runs in groups.items()}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    top, n_layers, handles = 90.0, 0, []
    for label, layers in summary.items():
        rule = groups[label][0].rule
        ls = RULE_STYLE.get(rule, ":")
        for k, s in enumerate(layers):
            _line_band(ax, s, color=f"C{k}", ls=ls)
            top = max(top, float(np.max(s["mean"] + s["std"])))
        n_layers = max(n_layers, len(layers))
        n = layers[0]["n"]
        handles.append(Line2D([], [], color="k", ls=ls,
                              label=f"{label} ({rule}{f', mean ± std of {n} runs' if n > 1 else ''})"))
    # the angles are of synapses 2…N (the first, from the static input, has no backward weight)
    handles += [Line2D([], [], color=f"C{k}", label=f"synapse layer {k + 2}") for k in range(n_layers)]
    ax.set_xlabel("epoch")
    ax.set_ylabel("angle between forward and backward weights (°)")
    ax.set_ylim(0, math.ceil(top))
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    ax.set_title(title or "weight alignment (App. G)")
    return _save(fig, path), summary
