"""Hardware-in-the-loop EP on MNIST: the ideal reference against the hardware with an ideal device and with device
presets, then ablations of the worst gap (issue: circuit settling and hardware-in-the-loop EP).

For every config of ``configs/hil/`` (784-512-10 and 784-512-512-10, squared error and read-out; symmetric EP,
plain SGD) it trains the ideal reference once and the hardware model once per device: the "ideal device" is the
ideal card with a pulse quantum of 1e-9 of the range and no read noise (a user card written next to the results),
then TaOx/HfOx, Ag:a-Si, PCMO and ReRAM ES (presets, with their variability and noise). Same data order,
initial weights and learning-rate schedule for every run (the configs' cosine decay, stretched over
``--epochs``). Then, on the worst (config, device) of the first config, ablation rows: deterministic rounding,
pulse trains (update management), refresh, symmetric mapping, weight range, learning rate ×0.5 / ×2.

Results: ``benchmarks/results/hil_mnist.json`` (written after every run; a rerun skips finished runs) and
``benchmarks/results/hil_mnist.md`` (the tables).

    python benchmarks/hil_mnist.py [--epochs 3] [--n-train 20000] [--configs ...] [--devices ...] [--no-ablation]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results"
CONFIGS = ["mnist_784_512_10_mse", "mnist_784_512_10_xent", "mnist_784_512_512_10_mse",
           "mnist_784_512_512_10_xent"]
DEVICES = ["ideal_device", "taox_hfox", "ag_a_si", "pcmo", "reram_es"]
ABLATIONS = {
    "stochastic rounding (baseline)": [],
    "deterministic rounding": ["hardware.update=deterministic"],
    "pulse trains (update management)": ["hardware.update=pulse_train"],
    "refresh at 5 % of range": ["hardware.refresh_threshold=0.05"],
    "symmetric mapping": ["hardware.mapping=symmetric"],
    "weight range ±0.5 (g0 = 2x range)": ["hardware.w_max=0.5"],
    "weight range ±0.25 (g0 = 4x range)": ["hardware.w_max=0.25"],
    "weight range ±0.25 + pulse trains": ["hardware.w_max=0.25", "hardware.update=pulse_train"],
    "learning rate x0.5": ["lr_scale=0.5"],
    "learning rate x2": ["lr_scale=2"],
}

FINE_CARD = """# The ideal device of the benchmark: linear, no noise, a pulse quantum of 1e-9 of the range.
[device]
name = "ideal (continuous)"
model = "ideal"

[parameters]
g_max = { value = 5, unit = "uS" }
g_min = { value = 100, unit = "nS" }
dw_min = { value = 1e-7, unit = "%range" }
"""


def _overrides(base, extra: list[str]) -> list[str]:
    out = []
    for e in extra:
        if e.startswith("lr_scale="):
            s = float(e.split("=")[1])
            out.append(f"train.lr={[v * s for v in base.train.lr]}")
        else:
            out.append(e)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000, help="training images per epoch (0: all 60,000)")
    ap.add_argument("--configs", nargs="*", default=CONFIGS)
    ap.add_argument("--devices", nargs="*", default=DEVICES)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--float64", nargs="*", default=[], metavar="CONFIG",
                    help="also run the reference and the ideal device in float64 for these configs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT / "hil_mnist.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    fine = OUT / "ideal_device_card.toml"
    fine.write_text(FINE_CARD)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    runs = results["runs"]

    def save():
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)

    def run(key: str, cfg_name: str, device: str | None, extra: list[str], dataset):
        if key in runs:
            print(f"skip {key} (done)")
            return dataset
        path = ROOT / "configs/hil" / f"{cfg_name}.toml"
        base = load_config(path)
        # w_max = 1 unless an ablation sets it: the tables in the README were measured so (the default is now "auto")
        over = [f"train.epochs={args.epochs}", f"train.decay_epochs={args.epochs}", "train.progress=false",
                "output.checkpoint=false", "hardware.w_max=1",
                f"data.n_train={args.n_train}",
                f'output.dir="{ROOT / "runs/bench/hil" / key.replace(" ", "_").replace("/", "_")}"']
        if device is not None:
            dev = str(fine) if device == "ideal_device" else device
            over.append(f'hardware.device="{dev}"')
            if device == "ideal_device":
                over.append("hardware.read_noise=false")
        cfg = load_config(path, over + _overrides(base, extra))
        t0 = time.perf_counter()
        if device is None:
            tr = Trainer(cfg, dataset=dataset, overwrite=True)
            hist = tr.fit(log=None)
            ds = tr.dataset
            extra_info = {}
        else:
            tr = HardwareTrainer(cfg, dataset=dataset)
            hist = tr.fit(log=None)
            ds = tr.dataset
            extra_info = {"representable_fraction": tr.hw.representable, "tau_s": tr.hw.tau}
        wall = time.perf_counter() - t0
        runs[key] = {"config": cfg_name, "device": device, "extra": extra, "history": hist, "wall_s": wall,
                     "test_acc": hist[-1]["test_acc"], "best_test_acc": max(h["test_acc"] for h in hist),
                     "train_time_per_epoch_s": sum(h["train_time_s"] for h in hist) / len(hist), **extra_info}
        save()
        print(f"{key}: test acc {hist[-1]['test_acc']:.4f}  {wall:.0f}s", flush=True)
        return ds

    for cfg_name in args.configs:
        ds = run(f"{cfg_name}/reference", cfg_name, None, [], None)
        for dev in args.devices:
            ds = run(f"{cfg_name}/{dev}", cfg_name, dev, [], ds)
    for cfg_name in args.float64:
        ds = run(f"{cfg_name}/reference float64", cfg_name, None, ["train.dtype=float64"], None)
        run(f"{cfg_name}/ideal_device float64", cfg_name, "ideal_device", ["train.dtype=float64"], ds)
    if not args.no_ablation:
        first = args.configs[0]
        worst = min((d for d in args.devices if d != "ideal_device"),
                    key=lambda d: runs[f"{first}/{d}"]["test_acc"])
        results["ablation"] = {"config": first, "device": worst}
        ds = None
        for label, extra in ABLATIONS.items():
            key = f"{first}/{worst}" if not extra else f"{first}/{worst}/{label}"
            ds = run(key, first, worst, extra, ds)
        save()
    write_tables(results, args.out.with_suffix(".md"))


def _energy_per_epoch(r: dict) -> float:
    """Programming energy per epoch [J]: pulses x the card's pulse energy (``DeviceCard.pulse_energy``; read
    energies are 0 on every preset card). Computed here so that runs recorded before the V²Gt estimate existed
    get it too."""
    from neuromorph.devices import load_card

    dev = str(OUT / "ideal_device_card.toml") if r["device"] == "ideal_device" else r["device"]
    return load_card(dev).pulse_energy * sum(m["pulses"] for m in r["history"]) / len(r["history"])


def write_tables(results: dict, path: Path) -> None:
    runs = results["runs"]
    lines = ["| config | device | test acc | gap (points) | pulses / epoch | energy / epoch | saturated | "
             "time / epoch (hw / ideal) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        f64 = r["extra"] == ["train.dtype=float64"]
        if r["device"] is None or (r["extra"] and not f64):
            continue
        ref = runs[f"{r['config']}/reference" + (" float64" if f64 else "")]
        h = r["history"]
        pulses = sum(m["pulses"] for m in h) / len(h)
        energy = _energy_per_epoch(r)
        ratio = r["train_time_per_epoch_s"] / ref["train_time_per_epoch_s"]
        lines.append(f"| {r['config'].removeprefix('mnist_')} | {r['device']}{' (float64)' if f64 else ''} | "
                     f"{100 * r['test_acc']:.2f} % "
                     f"(ref {100 * ref['test_acc']:.2f} %) | {100 * (ref['test_acc'] - r['test_acc']):+.2f} | "
                     f"{pulses:.3g} | {energy:.3g} J | {100 * h[-1]['saturated_fraction']:.1f} % | "
                     f"{r['train_time_per_epoch_s']:.1f} s / {ref['train_time_per_epoch_s']:.1f} s = {ratio:.1f}x |")
    if "ablation" in results:
        a = results["ablation"]
        ref = runs[f"{a['config']}/reference"]["test_acc"]
        lines += ["", f"Ablation on {a['config']} with {a['device']} (reference {100 * ref:.2f} %):", "",
                  "| variant | test acc | gap (points) | pulses / epoch |", "|---|---|---|---|"]
        for label, extra in ABLATIONS.items():
            key = f"{a['config']}/{a['device']}" if not extra else f"{a['config']}/{a['device']}/{label}"
            if key not in runs:
                continue
            r = runs[key]
            pulses = sum(m["pulses"] for m in r["history"]) / len(r["history"])
            lines.append(f"| {label} | {100 * r['test_acc']:.2f} % | {100 * (ref - r['test_acc']):+.2f} | "
                         f"{pulses:.3g} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
