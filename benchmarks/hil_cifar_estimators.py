"""Reduced CIFAR-10 on simulated crossbars: does the paper's ordering of the estimators survive the device?

    python benchmarks/hil_cifar_estimators.py --device reram_es --n-train 2000 --epochs 4
    python benchmarks/hil_cifar_estimators.py --w-max auto --n-train 4000 --epochs 5 --tag _auto

For each estimator (one-sided, random-sign, symmetric) the ideal reference and the hardware of
``configs/hil/cifar10_small_mse.toml`` (a 16-32 channel ConvNet, squared error, normalised and augmented
images) train on the same data, initial weights and schedule. Writes ``benchmarks/results/hil_cifar_estimators.json``
and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.data import load_dataset
from neuromorph.hil import HardwareTrainer
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/hil/cifar10_small_mse.toml"))
    ap.add_argument("--device", default="reram_es")
    ap.add_argument("--w-max", default="1", help='hardware.w_max: "auto" (the calibrated mapping) or a number')
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results files (e.g. _wmax0.25)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = [f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}", f"data.n_train={args.n_train}",
            f"data.n_test={args.n_test}", "train.progress=false", "output.checkpoint=false", f"train.seed={args.seed}",
            f'hardware.device="{args.device}"',
            'hardware.w_max="auto"' if args.w_max == "auto" else f"hardware.w_max={float(args.w_max)}",
            f'output.dir="{ROOT / "runs/bench/hil_cifar"}"']
    cfg0 = load_config(args.config, base)
    ds = load_dataset(cfg0.data.name, cfg0.data.dir or None, n_train=args.n_train, n_test=args.n_test)
    res = {"config": args.config, "device": args.device, "w_max": args.w_max, "n_train": args.n_train,
           "epochs": args.epochs, "estimators": {}}
    for est in ("one_sided", "random_sign", "symmetric"):
        cfg = load_config(args.config, [*base, f"ep.estimator={est}"])
        h_ref = Trainer(cfg, dataset=ds, overwrite=True).fit(log=None)
        h_hw = HardwareTrainer(cfg, dataset=ds, out=ROOT / "runs/bench/hil_cifar/hw").fit(log=None)
        res["estimators"][est] = {
            "reference": [h["test_acc"] for h in h_ref], "hardware": [h["test_acc"] for h in h_hw],
            "pulses": [h["pulses"] for h in h_hw],
            "time_s": [sum(h["train_time_s"] for h in h_ref), sum(h["train_time_s"] for h in h_hw)]}
        print(f"{est}: reference {h_ref[-1]['test_acc']:.4f}, hardware ({args.device}) {h_hw[-1]['test_acc']:.4f}",
              flush=True)
        out = ROOT / f"benchmarks/results/hil_cifar_estimators{args.tag}.json"
        out.write_text(json.dumps(res, indent=1))
    lines = ["| estimator | reference test accuracy | hardware test accuracy |", "|---|---|---|"]
    for est, r in res["estimators"].items():
        lines.append(f"| {est} | {100 * r['reference'][-1]:.2f} % | {100 * r['hardware'][-1]:.2f} % |")
    (ROOT / f"benchmarks/results/hil_cifar_estimators{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
