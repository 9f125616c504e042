"""A ConvNet on simulated crossbars against the ideal reference, per device preset and weight range.

    python benchmarks/hil_convnet.py                       # configs/compare_digits_convnet.toml, 4 presets
    python benchmarks/hil_convnet.py --config configs/hil/mnist_convnet_xent.toml --n-train 2000 --epochs 1
    python benchmarks/hil_convnet.py --config configs/hil/mnist_convnet_xent.toml --epochs 3 --w-max auto \
        --reference-from benchmarks/results/hil_seeds.json --no-timing --out benchmarks/results/hil_convnet_mnist.json

For every device: the hardware trained with ``hardware.w_max`` in ``--w-max`` (the mapping lever: the weight held
by a pair with one device at g_max and the other at g_min; ``auto``: calibrated from the initial weights, 4x each
layer's largest; ``autoK``: K times), the best
of them reported (best final test accuracy); the reference is trained once per seed, or its final accuracy taken
from a ``benchmarks/hil_seeds.py`` result of the same config, seed, epochs and training set
(``--reference-from``). Then, unless ``--no-timing``, the epoch time of the hardware against the reference's on the
same net, alternating (median of ``--repeats`` epochs each). Writes ``--out`` (default
``benchmarks/results/hil_convnet.json``) after every device, and a Markdown table beside it; a rerun with the same
settings skips the (device, mapping) runs already there, so a later mapping search adds to the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.hil import W_MAX_AUTO, HardwareTrainer
from neuromorph.runio import atomic_write
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def overrides(args, seed: int, extra=()) -> list[str]:
    return [f"train.seed={seed}", f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}",
            *([f"data.n_train={args.n_train}"] if args.n_train else []), "train.progress=false",
            "output.checkpoint=false", f'output.dir="{ROOT / "runs/bench/hil_convnet"}"', *extra]


def w_max_arg(text: str) -> str:
    """A mapping: ``auto`` (the calibrated default, 4x each layer's largest initial weight), ``autoK`` (K times,
    ``hardware.w_max_auto_factor = K``) or a number > 0 (every array's ``w_max``)."""
    factor = text[4:] if text.startswith("auto") else text
    try:
        value = float(factor) if factor else 1.0
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"--w-max {text!r}: a number > 0, 'auto' or 'autoK' (K > 0: K times the "
                                         "largest initial weight per layer) is allowed")
    if text.startswith("auto"):  # "auto4" is "auto" (the default multiple): one mapping, one run
        return "auto" if value == W_MAX_AUTO else text
    return str(value)  # "1" and "1.0" are one mapping


def mapping_overrides(w: str) -> list[str]:
    """The config overrides of a ``--w-max`` mapping."""
    if w.startswith("auto"):
        return ['hardware.w_max="auto"', *([f"hardware.w_max_auto_factor={float(w[4:])}"] if w[4:] else [])]
    return [f"hardware.w_max={float(w)}"]


def reference_from(path: Path, config: str, seed: int, epochs: int) -> list[dict]:
    """The reference's curve for ``config`` at ``seed`` in a ``hil_seeds.py`` result, as a history."""
    entry = json.loads(path.read_text()).get(f"{config}/seed{seed}")
    if entry is None:
        raise SystemExit(f"--reference-from {path}: no entry {config}/seed{seed} (run benchmarks/hil_seeds.py)")
    curve = entry["curves"]["reference"]
    if len(curve) != epochs:
        raise SystemExit(f"--reference-from {path}: {config}/seed{seed} ran {len(curve)} epochs, not {epochs}")
    return [{"test_acc": a} for a in curve]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/compare_digits_convnet.toml"))
    ap.add_argument("--devices", nargs="+", default=["reram_es", "taox_hfox", "pcmo", "epiram"])
    ap.add_argument("--w-max", type=w_max_arg, nargs="+", default=["1", "0.5", "0.25"],
                    help='mappings to try: numbers > 0 (w_max), "auto" (4x each layer\'s largest initial weight) or '
                         '"autoK" (K times)')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n-train", type=int, default=0, help="training images (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs timed per side, alternating")
    ap.add_argument("--timing-only", action="store_true",
                    help="rerun only the epoch timing (alone on the machine), keep the accuracy results")
    ap.add_argument("--no-timing", action="store_true", help="skip the epoch timing")
    ap.add_argument("--reference-from", type=Path, default=None,
                    help="a benchmarks/hil_seeds.py result holding this config's reference at this seed (trained "
                         "with the same epochs and training set): its accuracy is used instead of training again")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hil_convnet.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    cfg = load_config(args.config, overrides(args, args.seed))
    ref = Trainer(cfg, overwrite=True)
    settings = {"config": str(args.config), "epochs": args.epochs, "seed": args.seed, "n_train": args.n_train}
    old = json.loads(out.read_text()) if out.exists() else {}
    if args.timing_only:
        res = old
        h_ref = [{"test_acc": res["reference"]["test_acc"]}]
    elif all(old.get(k) == v for k, v in settings.items()) and "reference" in old:
        res, h_ref = old, [{"test_acc": old["reference"]["test_acc"]}]
        print(f"resuming {out}: reference {h_ref[-1]['test_acc']:.4f}, done: {', '.join(res['devices'])}", flush=True)
    else:
        if args.reference_from is not None:
            h_ref = reference_from(args.reference_from, Path(args.config).stem, args.seed, args.epochs)
            source = str(args.reference_from)
        else:
            h_ref, source = ref.fit(log=None), "trained here"
        res = {**settings, "reference": {"test_acc": h_ref[-1]["test_acc"], "curve": [h["test_acc"] for h in h_ref],
                                         "source": source}, "devices": {}}
        print(f"reference: test accuracy {h_ref[-1]['test_acc']:.4f} ({source})", flush=True)
    for device in [] if args.timing_only else args.devices:
        runs = res["devices"].get(device, {}).get("runs", {})
        for w in args.w_max:
            if w in runs:
                continue
            c = load_config(args.config, overrides(args, args.seed, [f'hardware.device="{device}"',
                                                                      *mapping_overrides(w)]))
            hwt = HardwareTrainer(c, dataset=ref.dataset, out=ROOT / "runs/bench/hil_convnet/hw")
            hist = hwt.fit(log=None)
            runs[w] = {"test_acc": hist[-1]["test_acc"], "gap_points": 100 * (h_ref[-1]["test_acc"] -
                                                                               hist[-1]["test_acc"]),
                       "pulses_per_epoch": statistics.fmean(h["pulses"] for h in hist),
                       "energy_J_per_epoch": statistics.fmean(h["energy_J"] for h in hist),
                       "saturated_fraction": hist[-1]["saturated_fraction"],
                       "representable": hwt.hw.representable, "curve": [h["test_acc"] for h in hist],
                       "cost_energy_per_sample_J": hist[-1].get("cost_energy_per_sample_J"),
                       "cost_energy_J_per_epoch": statistics.fmean(h.get("cost_energy_J", 0.0) for h in hist),
                       "cost_energy_by_term_J": hist[-1].get("cost_energy_by_term_J"),
                       "weight_range": {k: hwt.hw.card.g_range / g for k, g in hwt.hw.g0s.items()}}
            print(f"{device} w_max {w}: test accuracy {hist[-1]['test_acc']:.4f} (gap "
                  f"{runs[w]['gap_points']:+.2f} points), {runs[w]['pulses_per_epoch']:.3g} pulses/epoch", flush=True)
            best = max(runs, key=lambda k: runs[k]["test_acc"])
            res["devices"][device] = {"runs": runs, "best_w_max": best}
            write(out, res, args)
    if args.no_timing:
        return
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
    write(out, res, args)


def write(out: Path, res: dict, args) -> None:
    """The JSON (atomically) and its Markdown table."""
    atomic_write(out, lambda f: f.write(json.dumps(res, indent=1).encode()))
    lines = ["| device | best w_max | test accuracy | gap (points) | pulses / epoch | pulse energy / epoch | "
             "chip energy / epoch (/ training sample) |", "|---|---|---|---|---|---|---|",
             f"| ideal reference | | {100 * res['reference']['test_acc']:.2f} % | | | | |"]
    for device, d in res["devices"].items():
        r = d["runs"][str(d["best_w_max"])]
        e = f"{r['energy_J_per_epoch']:.3g} J" if r["energy_J_per_epoch"] else "n/a"
        c = r.get("cost_energy_per_sample_J")
        c = f"{r['cost_energy_J_per_epoch']:.3g} J ({c * 1e9:.3g} nJ)" if c else "n/a"
        lines.append(f"| {device} | {d['best_w_max']} | {100 * r['test_acc']:.2f} % | {r['gap_points']:+.2f} | "
                     f"{r['pulses_per_epoch']:.3g} | {e} | {c} |")
    if "epoch_time_s" in res:
        lines.append(f"\nEpoch time, hardware (ideal card) / reference: {res['epoch_time_s']['ratio_median']:.2f}x "
                     f"(median of {args.repeats} alternating epochs)")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
