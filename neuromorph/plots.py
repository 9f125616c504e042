"""Figures: learning curves (train dashed, test solid, as the paper's Fig. 3/4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_learning_curves"]


def plot_learning_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Error rate (%) per epoch for each run: train dashed, test solid. Writes PNG (and SVG)."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, (label, hist) in enumerate(histories.items()):
        color = f"C{i}"
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [100 * (1 - h["test_acc"]) for h in hist], color=color, label=f"{label} (test)")
        ax.plot(ep, [100 * (1 - h["train_acc"]) for h in hist], color=color, ls="--", alpha=0.8,
                label=f"{label} (train)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path
