"""Energy, latency and area of EP training and inference on five device cards (the cost model, neuromorph.cost).

    python benchmarks/cost_presets.py                       # MNIST 784-512-10 read-out, 1 epoch, 5 cards
    python benchmarks/cost_presets.py --cifar-batches 2     # and the paper's CIFAR-10 ConvNet, from 2 batches

MNIST: ``configs/hil/mnist_784_512_10_xent.toml`` (softmax read-out, symmetric EP, T = 30, K = 10, batch 50), one
epoch of the whole training set on each card (``hardware.w_max = "auto"``), the cost model's figures per training
sample from that epoch's counters (``metrics.jsonl``'s ``cost_*``), per inference from a free phase on 1,000 test
images, the test accuracy after the epoch. CIFAR-10: the paper's ConvNet (``configs/table1/xent_symmetric.toml``,
128-256-512-512 channels, T = 250, K = 25, batch 128) on the first card, per training sample from ``--cifar-batches``
batches on the hardware path and per inference from a free phase on 32 test images (the counts per sample do not
depend on the batch). The simulated periphery is ideal (no converter noise), the converters are costed at the
technology card's resolution (6-bit ADC, 8-bit DAC).

Writes ``benchmarks/results/cost_presets.json`` / ``.md`` and ``docs/cost_breakdown_mnist.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.cost import CATEGORIES, measure, measure_inference, plot_breakdown
from neuromorph.hil import HardwareTrainer
from neuromorph.runio import json_safe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results"


def _row(label: str, r: dict) -> str:
    e = r["energy_per_sample_by_term_J"]
    return (f"| {label} | {r['energy_per_sample_J']:.3g} J | " + " | ".join(f"{e[c]:.2g}" for c in CATEGORIES)
            + f" | {r['largest_term']} | {r['latency_per_sample_s']:.3g} s | {r['area_m2'] * 1e6:.3g} mm² | "
            f"{r['gpu_energy_per_sample_J']:.3g} J |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["taox_hfox", "pcmo", "ag_a_si", "epiram", "alox_hfo2"])
    ap.add_argument("--n-train", type=int, default=0, help="MNIST training images (0: all 60,000)")
    ap.add_argument("--cifar-batches", type=int, default=0, help="CIFAR-10 ConvNet batches measured (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = OUT / "cost_presets.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    mnist = {}
    for dev in args.devices:
        cfg = load_config(ROOT / "configs/hil/mnist_784_512_10_xent.toml", [
            f'hardware.device="{dev}"', "train.epochs=1", "train.decay_epochs=1", "train.progress=false",
            "output.checkpoint=false", *([f"data.n_train={args.n_train}"] if args.n_train else [])])
        t0 = time.perf_counter()
        tr = HardwareTrainer(cfg, out=ROOT / f"runs/bench/cost/{dev}")
        m = tr.train_epoch(0)
        x, _ = tr.split("test")
        inf = measure_inference(tr.sub, x[:1000].to(tr.net.dtype))
        train = tr.sub.last_cost
        mnist[dev] = {"training": train, "inference": inf}
        res[f"mnist/{dev}"] = {"test_acc": m["test_acc"], "pulses": m["pulses"], "training": train.to_dict(),
                               "inference": inf.to_dict(), "samples": train.samples,
                               "wall_s": time.perf_counter() - t0}
        print(f"{dev}: acc {m['test_acc']:.4f}  train {train.energy_per_sample:.3g} J/sample "
              f"({train.largest_term})  infer {inf.energy_per_sample:.3g} J  {time.perf_counter() - t0:.0f} s",
              flush=True)
        path.write_text(json.dumps(json_safe(res), indent=1))
    if mnist:
        labels = {f"{r['training'].device}\ntraining": r["training"] for r in mnist.values()}
        labels.update({f"{r['inference'].device}\ninference": r["inference"] for r in mnist.values()})
        plot_breakdown({k: v for k, v in labels.items() if "training" in k}, ROOT / "docs/cost_breakdown_mnist.png",
                       title="MNIST 784-512-10 (read-out): energy per training sample by term")
        plot_breakdown({k: v for k, v in labels.items() if "inference" in k},
                       ROOT / "docs/cost_breakdown_mnist_inference.png",
                       title="MNIST 784-512-10 (read-out): energy per inference by term")
    if args.cifar_batches:
        dev = args.devices[0]
        cfg = load_config(ROOT / "configs/table1/xent_symmetric.toml", [
            f'hardware.device="{dev}"', "train.progress=false", "output.checkpoint=false",
            "data.n_train=1280", "data.n_test=64"])
        t0 = time.perf_counter()
        r = measure(cfg, args.cifar_batches, infer_batch=32, log=None)
        res[f"cifar10_convnet/{dev}"] = {"training": r["training"].to_dict(), "inference": r["inference"].to_dict(),
                                         "batches": args.cifar_batches, "wall_s": time.perf_counter() - t0}
        print(f"CIFAR-10 ConvNet on {dev}: train {r['training'].energy_per_sample:.3g} J/sample, infer "
              f"{r['inference'].energy_per_sample:.3g} J ({time.perf_counter() - t0:.0f} s)", flush=True)
        path.write_text(json.dumps(json_safe(res), indent=1))
    head = ("| run | energy / sample | " + " | ".join(f"{c} (J)" for c in CATEGORIES)
            + " | largest | latency / sample | area | GPU estimate |")
    lines = ["# Cost model: energy, latency and area per sample (`python benchmarks/cost_presets.py`)", "",
             "Training (per training sample) and inference (per image); the technology card "
             "`device_models/technology/default.toml`.", "", head, "|---" * (8 + len(CATEGORIES)) + "|"]
    for key, r in res.items():
        acc = f" (test acc {100 * r['test_acc']:.2f} %)" if "test_acc" in r else ""
        lines.append(_row(f"{key} training{acc}", r["training"]))
        lines.append(_row(f"{key} inference", r["inference"]))
    (OUT / "cost_presets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
