"""Ideal reference vs hardware with the ideal device over several seeds, against the reference's own spread.

    python benchmarks/hil_seeds.py --config mnist_784_512_512_10_xent --seeds 0 1 2

For every seed: the ideal reference, the hardware with the ideal device (the card of ``hil_mnist.py``: linear, a
pulse quantum of 1e-9 of the range, no read noise) and a *control*: the reference again with every initial weight
moved by one float32 rounding step (relative 2^-23, random sign). EP training of these networks amplifies any
perturbation of 1e-9 (the hardware's pulse quantum, or a rounding difference) until the trajectories part, so a
per-seed gap is only meaningful against the control's gap: the gap the reference has with itself. Same data,
schedule (the config's cosine decay stretched over ``--epochs``) and initial weights otherwise.

Writes ``benchmarks/results/hil_seeds.json`` (one entry per config and seed, rewritten after each seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer, perturb_one_ulp
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def summary(res: dict, config: str) -> dict:
    rows = [v for k, v in res.items() if k.startswith(f"{config}/seed")]
    gap = [100 * (r["reference"] - r["ideal_device"]) for r in rows]
    ctl = [100 * (r["reference"] - r["reference_perturbed"]) for r in rows if "reference_perturbed" in r]
    out = {"seeds": len(rows), "gap_points": gap, "gap_mean": statistics.fmean(gap)}
    if ctl:
        out.update(control_points=ctl, control_mean=statistics.fmean(ctl))
    if len(gap) > 1:
        out["gap_std"] = statistics.stdev(gap)
    if len(ctl) > 1:
        out["control_std"] = statistics.stdev(ctl)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="mnist_784_512_512_10_xent",
                    help="a config of configs/hil by name, or the path of a config file")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000, help="training images (0: the whole training set)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = ROOT / "benchmarks/results/hil_seeds.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    card = ROOT / "benchmarks/results/ideal_device_card.toml"
    path = Path(args.config) if args.config.endswith(".toml") else ROOT / "configs/hil" / f"{args.config}.toml"
    args.config = path.stem
    for seed in args.seeds:
        cfg = load_config(path, [
            f"train.seed={seed}", f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}",
            *([f"data.n_train={args.n_train}"] if args.n_train else []), "train.progress=false",
            "output.checkpoint=false", "hardware.w_max=1",  # as measured in the README (the default is now "auto")
            f'hardware.device="{card}"', "hardware.read_noise=false",
            f'output.dir="{ROOT / "runs/bench/hil_seeds"}"'])
        ref = Trainer(cfg, overwrite=True)
        h_ref = ref.fit(log=None)
        h_hw = HardwareTrainer(cfg, dataset=ref.dataset, out=ROOT / "runs/bench/hil_seeds/hw").fit(log=None)
        ctl = Trainer(cfg, dataset=ref.dataset, overwrite=True)
        perturb_one_ulp(ctl.net)
        h_ctl = ctl.fit(log=None)
        res = json.loads(out.read_text()) if out.exists() else {}  # another run may have written since
        res[f"{args.config}/seed{seed}"] = {
            "reference": h_ref[-1]["test_acc"], "ideal_device": h_hw[-1]["test_acc"],
            "reference_perturbed": h_ctl[-1]["test_acc"],
            "curves": {"reference": [h["test_acc"] for h in h_ref], "ideal_device": [h["test_acc"] for h in h_hw],
                       "reference_perturbed": [h["test_acc"] for h in h_ctl]}}
        res[f"{args.config}/summary"] = summary(res, args.config)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(out)
        print(f"seed {seed}: reference {h_ref[-1]['test_acc']:.4f}  ideal device {h_hw[-1]['test_acc']:.4f}  "
              f"reference, weights moved by one ulp {h_ctl[-1]['test_acc']:.4f}", flush=True)
    print(json.dumps(res[f"{args.config}/summary"], indent=1))


if __name__ == "__main__":
    main()
