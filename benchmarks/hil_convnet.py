"""A ConvNet on simulated crossbars against the ideal reference, per device preset and weight range.

    python benchmarks/hil_convnet.py                       # configs/compare_digits_convnet.toml, 4 presets
    python benchmarks/hil_convnet.py --config configs/hil/mnist_convnet_xent.toml --n-train 2000 --epochs 1

For every device: the hardware trained with ``hardware.w_max`` in ``--w-max`` (the mapping lever: the weight held
by a pair with one device at g_max and the other at g_min), the best of them reported (best final test
accuracy); the reference is trained once per seed. Then the epoch time of the hardware against the reference's on
the same net, alternating (median of ``--repeats`` epochs each). Writes ``benchmarks/results/hil_convnet.json``
and a Markdown table beside it.
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


def overrides(args, seed: int, extra=()) -> list[str]:
    return [f"train.seed={seed}", f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}",
            *([f"data.n_train={args.n_train}"] if args.n_train else []), "train.progress=false",
            "output.checkpoint=false", f'output.dir="{ROOT / "runs/bench/hil_convnet"}"', *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/compare_digits_convnet.toml"))
    ap.add_argument("--devices", nargs="+", default=["reram_es", "taox_hfox", "pcmo", "epiram"])
    ap.add_argument("--w-max", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n-train", type=int, default=0, help="training images (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs timed per side, alternating")
    ap.add_argument("--timing-only", action="store_true",
                    help="rerun only the epoch timing (alone on the machine), keep the accuracy results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = ROOT / "benchmarks/results/hil_convnet.json"
    cfg = load_config(args.config, overrides(args, args.seed))
    ref = Trainer(cfg, overwrite=True)
    if args.timing_only:
        res = json.loads(out.read_text())
        h_ref = [{"test_acc": res["reference"]["test_acc"]}]
    else:
        h_ref = ref.fit(log=None)
        res = {"config": str(args.config), "epochs": args.epochs, "seed": args.seed,
               "reference": {"test_acc": h_ref[-1]["test_acc"], "curve": [h["test_acc"] for h in h_ref]},
               "devices": {}}
        print(f"reference: test accuracy {h_ref[-1]['test_acc']:.4f}", flush=True)
    for device in [] if args.timing_only else args.devices:
        runs = {}
        for w in args.w_max:
            c = load_config(args.config, overrides(args, args.seed, [f'hardware.device="{device}"',
                                                                      f"hardware.w_max={w}"]))
            hwt = HardwareTrainer(c, dataset=ref.dataset, out=ROOT / "runs/bench/hil_convnet/hw")
            hist = hwt.fit(log=None)
            runs[w] = {"test_acc": hist[-1]["test_acc"], "gap_points": 100 * (h_ref[-1]["test_acc"] -
                                                                               hist[-1]["test_acc"]),
                       "pulses_per_epoch": statistics.fmean(h["pulses"] for h in hist),
                       "energy_J_per_epoch": statistics.fmean(h["energy_J"] for h in hist),
                       "saturated_fraction": hist[-1]["saturated_fraction"],
                       "representable": hwt.hw.representable, "curve": [h["test_acc"] for h in hist]}
            print(f"{device} w_max {w}: test accuracy {hist[-1]['test_acc']:.4f} (gap "
                  f"{runs[w]['gap_points']:+.2f} points), {runs[w]['pulses_per_epoch']:.3g} pulses/epoch", flush=True)
        best = max(runs, key=lambda w: runs[w]["test_acc"])
        res["devices"][device] = {"runs": {str(k): v for k, v in runs.items()}, "best_w_max": best}
    # epoch time, alternating, on the ideal card
    c = load_config(args.config, overrides(args, args.seed, ["train.epochs=1"]))
    t_ref, t_hw = [], []
    for _ in range(args.repeats):
        r = Trainer(c, dataset=ref.dataset, overwrite=True)
        t_ref.append(r.fit(log=None)[0]["train_time_s"])
        h = HardwareTrainer(c, dataset=ref.dataset, out=ROOT / "runs/bench/hil_convnet/hw")
        t_hw.append(h.fit(log=None)[0]["train_time_s"])
    res["epoch_time_s"] = {"reference": t_ref, "hardware_ideal_card": t_hw,
                           "ratio_median": statistics.median(t_hw) / statistics.median(t_ref)}
    out.write_text(json.dumps(res, indent=1))
    lines = ["| device | best w_max | test accuracy | gap (points) | pulses / epoch | energy / epoch |",
             "|---|---|---|---|---|---|",
             f"| ideal reference | | {100 * h_ref[-1]['test_acc']:.2f} % | | | |"]
    for device, d in res["devices"].items():
        r = d["runs"][str(d["best_w_max"])]
        e = f"{r['energy_J_per_epoch']:.3g} J" if r["energy_J_per_epoch"] else "n/a"
        lines.append(f"| {device} | {d['best_w_max']} | {100 * r['test_acc']:.2f} % | {r['gap_points']:+.2f} | "
                     f"{r['pulses_per_epoch']:.3g} | {e} |")
    lines.append(f"\nEpoch time, hardware (ideal card) / reference: {res['epoch_time_s']['ratio_median']:.2f}x "
                 f"(median of {args.repeats} alternating epochs)")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
