"""Time of one training epoch: hardware-in-the-loop vs the ideal reference, same network, data and schedule.

Alternates one epoch of the ideal reference (``Trainer.train_epoch``) and one of the hardware model
(``HardwareTrainer.train_epoch``) ``--repeats`` times on MNIST (``--n-train`` images) and prints the median
training time of each and their ratio, per config and device (epoch ``r`` of the recipe's schedule for repeat
``r``: the first, with the largest learning rate, programs the most pulses). Evaluation is not included (the same
for both sides).

    python benchmarks/hil_epoch_time.py [--config configs/hil/mnist_784_512_10_mse.toml ...] [--devices taox_hfox ...]
        [--out benchmarks/results/hil_epoch_time.json]
    python benchmarks/hil_epoch_time.py --updates stochastic_rounding mixed_precision tiki_taka ttv2 --w-max auto \
        --devices taox_hfox --out benchmarks/results/hil_epoch_time_policies.json     # the update policies' times

A device is a preset name or a card file (e.g. ``benchmarks/results/ideal_device_card.toml``, whose 1e-9 pulse
quantum makes every update pulse every device: the dense programming path).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, nargs="+", default=[ROOT / "configs/hil/mnist_784_512_10_mse.toml"])
    ap.add_argument("--devices", nargs="*", default=["taox_hfox", "ag_a_si", "pcmo", "reram_es"])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--updates", nargs="+", default=["stochastic_rounding"], help="hardware.update policies timed")
    ap.add_argument("--w-max", default="1", help='hardware.w_max ("auto" or a number; 1 as the recorded tables)')
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of every run (repeatable; e.g. a policy's tuned parameters, "
                         "hardware.tt_reset_fast=true: the tt_* keys touch only Tiki-Taka/TTv2)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hil_epoch_time.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    dataset = None
    for config in args.config:
        name = str(config.resolve().relative_to(ROOT))
        for dev, update in [(d, u) for d in args.devices for u in args.updates]:
            w_max = f'"{args.w_max}"' if args.w_max == "auto" else args.w_max
            cfg = load_config(config, [f"data.n_train={args.n_train}", "train.progress=false",
                                       f"hardware.w_max={w_max}", "output.checkpoint=false",
                                       f'hardware.device="{dev}"', f'hardware.update="{update}"',
                                       f'output.dir="{ROOT / "runs/bench/hil_time"}"', *args.set])
            ideal = Trainer(cfg, dataset=dataset, overwrite=True)
            dataset = ideal.dataset
            hw = HardwareTrainer(cfg, dataset=dataset, out=ROOT / "runs/bench/hil_time/hw")
            t_i, t_h = [], []
            for r in range(args.repeats):
                t_i.append(ideal.train_epoch(r, evaluate=False)["train_time_s"])
                t_h.append(hw.train_epoch(r, evaluate=False)["train_time_s"])
            mi, mh = statistics.median(t_i), statistics.median(t_h)
            worst = max(h / i for h, i in zip(t_h, t_i))
            rows.append({"config": name, "device": dev, "update": update, "ideal_s": t_i, "hardware_s": t_h,
                         "ideal_median_s": mi, "hardware_median_s": mh, "ratio": mh / mi, "worst_epoch_ratio": worst})
            print(f"{config.stem} {dev:>10} {update}: ideal {mi:.2f} s/epoch  hardware {mh:.2f} s/epoch  "
                  f"ratio {mh / mi:.2f}x"
                  f" (worst epoch {worst:.2f}x; runs {[round(t, 2) for t in t_i]} / {[round(t, 2) for t in t_h]})",
                  flush=True)
    out = args.out
    out.write_text(json.dumps({"configs": [str(c.resolve().relative_to(ROOT)) for c in args.config],
                               "n_train": args.n_train, "threads": args.threads, "torch": torch.__version__,
                               "set": args.set,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
