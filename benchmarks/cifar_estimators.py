"""Reduced CIFAR-10: one-sided, random-sign and symmetric EP estimates side by side (Table 1, Fig. 3).

Trains the same ConvNet, initial weights and data order with each estimator (default recipe
``configs/cifar10_small_mse.toml``: squared error, β = 0.5) and prints final/best test error and
final train error per estimator, writes ``benchmarks/results/cifar_estimators.json`` and the
learning curves (train dashed, test solid) to ``benchmarks/results/cifar_estimators.png``.

    python benchmarks/cifar_estimators.py [--config FILE] [--epochs N] [--n-train N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.plots import plot_learning_curves
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs/cifar10_small_mse.toml")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = [f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}"] if args.epochs else []
    extra += [f"data.n_train={args.n_train}"] if args.n_train else []
    rows, hists, dataset = [], {}, None
    for est in ("one_sided", "random_sign", "symmetric"):
        cfg = load_config(args.config, [f"ep.estimator={est}", "train.progress=false",
                                        f'output.dir="{ROOT / "runs/bench/cifar" / est}"', *extra])
        tr = Trainer(cfg, dataset=dataset, overwrite=True)
        dataset = tr.dataset
        t0 = time.perf_counter()
        h = tr.fit()
        hists[est] = h
        rows.append({"estimator": est, "final_test_error": 100 * (1 - h[-1]["test_acc"]),
                     "best_test_error": 100 * (1 - max(x["test_acc"] for x in h)),
                     "final_train_error": 100 * (1 - h[-1]["train_acc"]), "epochs": len(h),
                     "wall_s": time.perf_counter() - t0, "s_per_epoch": h[-1]["train_time_s"]})
    res = ROOT / "benchmarks/results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "cifar_estimators.json").write_text(json.dumps({"rows": rows, "history": hists}, indent=1))
    plot_learning_curves(hists, res / "cifar_estimators.png", title=f"CIFAR-10 (reduced): {args.config.name}")
    print(f"\n{'estimator':<13}{'test err %':>11}{'best %':>8}{'train err %':>12}{'s/epoch':>9}")
    for r in rows:
        print(f"{r['estimator']:<13}{r['final_test_error']:>11.2f}{r['best_test_error']:>8.2f}"
              f"{r['final_train_error']:>12.2f}{r['s_per_epoch']:>9.1f}")
    print("command: python benchmarks/cifar_estimators.py" + (f" --epochs {args.epochs}" if args.epochs else ""))


if __name__ == "__main__":
    main()
