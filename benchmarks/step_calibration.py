"""How large is a device's real step where training starts, against the nominal step the update rounds to?

    python benchmarks/step_calibration.py                      # every preset, MNIST 784-512-10, calibrated mapping
    python benchmarks/step_calibration.py --lr-scan 1 2 4 8    # and the reference at multiples of its learning rates

Every update policy converts a request ``ΔW`` into pulses of the card's *nominal* step ``dw`` (``ΔW / dw`` steps:
stochastic rounding, mixed precision's accumulator, Tiki-Taka's transfers). Where a card's real step at the
devices' state differs from ``dw`` (nonlinear cards: a PCM step near ``g_min`` is many nominal steps), the chip
trains with that multiple of SGD's learning rate. This script maps the initial weights of
``configs/hil/mnist_784_512_10_mse.toml`` (seed 0) onto each preset's arrays exactly as a training run does, fires
one pulse of each sign at every pair (from the same state: restored between the signs) and reports the realised
``ΔW`` of the persistent conductances (without write noise: :func:`persistent_weights`) in nominal steps, apart
for the pulses that potentiate the pulsed device and those that depress it: mean, median and 90th percentile over
every pair of every array.

``--lr-scan`` trains the ideal reference of the squared-error recipe (all 60,000 images, 3 epochs, seed 0) with
its learning rates times each multiple: what a hardware run with larger effective steps is compared with.
Writes ``benchmarks/results/step_calibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.devices import list_presets
from neuromorph.hil import hardware_from_config
from neuromorph.runio import atomic_write
from neuromorph.train import Trainer, build_network

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/hil/mnist_784_512_10_mse.toml"


def persistent_weights(pairs) -> torch.Tensor:
    """The pairs' weights from their persistent conductances: without the write noise of the cards that have it
    (aihwkit's ``write_noise_std``, redrawn on the apparent conductance at every write; its size is the card's
    parameter, in steps), which would otherwise dominate a one-pulse difference."""
    return (pairs.pos.g_persistent - pairs.neg.g_persistent) / pairs.g0


def realised_steps(device: str) -> dict:
    """Mean, median and 90th percentile of the realised step (in nominal steps) of one pulse that potentiates the
    pulsed device and of one that depresses it, from the initial state. A pulse goes to the device of the weight's
    sign (the bidirectional policy): a +1 weight pulse potentiates ``G+`` where ``W >= 0`` and depresses ``G−``
    where ``W < 0``."""
    cfg = load_config(CONFIG, [f'hardware.device="{device}"', "train.seed=0", "hardware.seed=0"])
    net = build_network(cfg, 784, 10, None)
    hw = hardware_from_config(cfg, net)
    got = {"potentiate": [], "depress": []}
    for sign in (1, -1):
        state = hw.state_dict()
        for arr in hw.arrays().values():
            pairs = arr.array
            w0 = persistent_weights(pairs)
            positive = (w0 >= 0).flatten()
            pairs.apply_weight_pulses(torch.full(pairs.shape, sign, dtype=torch.int32))
            d = (sign * (persistent_weights(pairs) - w0) / pairs.dw).flatten()
            up = positive if sign > 0 else ~positive
            got["potentiate"].append(d[up])
            got["depress"].append(d[~up])
        hw.load_state_dict(state)
    out = {}
    for name, parts in got.items():
        s = torch.cat(parts).double()
        out[name] = {"mean": float(s.mean()), "median": float(s.median()), "p90": float(s.quantile(0.9))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=list_presets())
    ap.add_argument("--lr-scan", type=float, nargs="*", default=[], metavar="MULTIPLE")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = {"config": str(CONFIG.relative_to(ROOT)), "steps": {}, "lr_scan": {}}
    lines = ["Realised step of one pulse at the initial state, in nominal steps (mean / median / 90th percentile "
             "over every pair; `configs/hil/mnist_784_512_10_mse.toml`, seed 0, calibrated mapping):", "",
             "| device | potentiating the device | depressing it |", "|---|---|---|"]
    for dev in args.devices:
        r = res["steps"][dev] = realised_steps(dev)
        lines.append(f"| {dev} | " + " | ".join(f"{r[k]['mean']:.2f} / {r[k]['median']:.2f} / {r[k]['p90']:.2f}"
                                               for k in ("potentiate", "depress")) + " |")
        print(lines[-1], flush=True)
    if args.lr_scan:
        base = load_config(CONFIG).train.lr
        lines += ["", "The reference (squared error, all images, 3 epochs, seed 0) at multiples of its learning rates:",
                  "", "| multiple | learning rates | test accuracy per epoch |", "|---|---|---|"]
        for m in args.lr_scan:
            lr = [x * m for x in base]
            cfg = load_config(CONFIG, [f"train.lr={lr}", "train.seed=0", "train.progress=false",
                                       "output.checkpoint=false", f'output.dir="{ROOT / "runs/bench/lr_scan"}"'])
            hist = Trainer(cfg, overwrite=True).fit(log=None)
            acc = [100 * h["test_acc"] for h in hist]
            res["lr_scan"][str(m)] = {"lr": lr, "test_acc": acc}
            lines.append(f"| {m:g} | {', '.join(f'{x:g}' for x in lr)} | {' / '.join(f'{a:.2f} %' for a in acc)} |")
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks/results/step_calibration.json"
    atomic_write(out, lambda f: f.write(json.dumps(res, indent=1).encode()))
    atomic_write(out.with_suffix(".md"), lambda f: f.write(("\n".join(lines) + "\n").encode()))


if __name__ == "__main__":
    main()
