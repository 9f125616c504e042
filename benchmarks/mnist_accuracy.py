"""MNIST accuracy and speed of the ideal engine: symmetric EP and BPTT on the same networks.

For each config (default: the two MNIST benchmarks of issue #2) trains EP as configured, then
BPTT on the same network, data order and initial weights (``train.algorithm=bptt``), and prints
a table: final/best test error, epochs, seconds per epoch, training samples/s. Results are also
written to ``benchmarks/results/mnist_accuracy.json``.

    python benchmarks/mnist_accuracy.py [--configs A.toml B.toml] [--epochs N] [--skip-bptt]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "configs/mnist_784_512_10_mse.toml", ROOT / "configs/mnist_784_512_512_10_xent.toml"]


def run(path: Path, algorithm: str, epochs: int | None, out: Path) -> dict:
    overrides = [f"train.algorithm={algorithm}", "train.progress=false", f'output.dir="{out}"']
    if epochs:
        overrides += [f"train.epochs={epochs}"]
    cfg = load_config(path, overrides)
    t0 = time.perf_counter()
    hist = Trainer(cfg, overwrite=True).fit()
    return {"config": str(path.relative_to(ROOT)), "algorithm": algorithm, "layers": list(cfg.model.layers),
            "loss": cfg.model.loss, "epochs": len(hist), "final_test_error": 100 * (1 - hist[-1]["test_acc"]),
            "best_test_error": 100 * (1 - max(h["test_acc"] for h in hist)),
            "final_train_error": 100 * (1 - hist[-1]["train_acc"]),
            "s_per_epoch": statistics.median(h["train_time_s"] for h in hist),
            "samples_per_s": statistics.median(h["samples_per_s"] for h in hist),
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--skip-bptt", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.configs:
        for alg in ("ep",) + (() if args.skip_bptt else ("bptt",)):
            rows.append(run(path.resolve(), alg, args.epochs, ROOT / "runs/bench" / f"{path.stem}-{alg}"))
    res = ROOT / "benchmarks/results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "mnist_accuracy.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'network':<20}{'loss':<6}{'alg':<6}{'epochs':>7}{'test err %':>11}{'best %':>8}"
          f"{'train err %':>12}{'s/epoch':>9}{'samples/s':>11}")
    for r in rows:
        print(f"{'-'.join(map(str, r['layers'])):<20}{r['loss']:<6}{r['algorithm']:<6}{r['epochs']:>7}"
              f"{r['final_test_error']:>11.2f}{r['best_test_error']:>8.2f}{r['final_train_error']:>12.2f}"
              f"{r['s_per_epoch']:>9.1f}{r['samples_per_s']:>11.0f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; command: python benchmarks/mnist_accuracy.py")


if __name__ == "__main__":
    main()
