"""Ideal reference vs hardware with the ideal device over several seeds (the deep-network gap of hil_mnist.py).

    python benchmarks/hil_seeds.py --config mnist_784_512_512_10_xent --seeds 1 2

Appends to ``benchmarks/results/hil_seeds.json`` (seed 0 is the run of ``hil_mnist.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="mnist_784_512_512_10_xent")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = ROOT / "benchmarks/results/hil_seeds.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    card = ROOT / "benchmarks/results/ideal_device_card.toml"
    for seed in args.seeds:
        cfg = load_config(ROOT / "configs/hil" / f"{args.config}.toml", [
            f"train.seed={seed}", f"train.epochs={args.epochs}", f"data.n_train={args.n_train}",
            "train.progress=false", "output.checkpoint=false", f'hardware.device="{card}"', "hardware.read_noise=false",
            f'output.dir="{ROOT / "runs/bench/hil_seeds"}"'])
        ref = Trainer(cfg)
        h_ref = ref.fit(log=None)
        h_hw = HardwareTrainer(cfg, dataset=ref.dataset, out=ROOT / "runs/bench/hil_seeds/hw").fit(log=None)
        res[f"{args.config}/seed{seed}"] = {"reference": h_ref[-1]["test_acc"], "ideal_device": h_hw[-1]["test_acc"]}
        out.write_text(json.dumps(res, indent=1))
        print(f"seed {seed}: reference {h_ref[-1]['test_acc']:.4f}  "
              f"ideal device {h_hw[-1]['test_acc']:.4f}", flush=True)


if __name__ == "__main__":
    main()
