"""Every device preset in the loop on MNIST, with the calibrated mapping (``hardware.w_max = "auto"``) and the old
default (``w_max = 1``).

    python benchmarks/hil_presets.py --n-train 20000 --epochs 3        # both 784-512-10 recipes, 12 presets
    python benchmarks/hil_presets.py --update mixed_precision --w-max auto --configs mnist_784_512_10_mse \
        --devices reram_es taox_hfox pcmo ag_a_si                           # an update policy (its own results file)

For each config (``configs/hil/mnist_784_512_10_mse.toml`` and ``..._xent.toml``) the reference is trained once
(per seed), then every preset with each mapping of ``--w-max`` on the same data order, initial weights and schedule.
Reports test accuracy, the gap to the reference in points (positive: the hardware is worse), pulses and energy
per epoch, saturated devices at the end, and the weight range ``w_max`` each array got. Writes
``benchmarks/results/hil_presets.json`` (after every run: a killed run keeps what it finished and is skipped when
the command is run again) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from neuromorph.config import load_config
from neuromorph.devices import list_presets
from neuromorph.hil import HardwareTrainer
from neuromorph.runio import atomic_write
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def table(res: dict) -> str:
    lines = []
    for cfg_name, c in res["configs"].items():
        maps = res["w_max"]
        lines += [f"### {cfg_name} (reference {c['reference_mean']:.2f} %, {len(c['reference'])} seed(s))", "",
                  "| device | " + " | ".join(f"w_max = {m}: acc (gap)" for m in maps) + " | pulses / epoch (auto) |",
                  "|---|" + "---|" * (len(maps) + 1)]
        for dev, runs in c["devices"].items():
            cells = []
            for m in maps:
                r = runs.get(str(m))
                cells.append("" if r is None else f"{r['acc_mean']:.2f} % ({r['gap_mean']:+.1f})")
            auto = runs.get("auto")
            pulses = f"{auto['pulses_per_epoch']:.2g}" if auto else ""
            lines.append(f"| {dev} | " + " | ".join(cells) + f" | {pulses} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["mnist_784_512_10_mse", "mnist_784_512_10_xent"])
    ap.add_argument("--devices", nargs="+", default=[p for p in list_presets() if p != "ideal"])
    ap.add_argument("--w-max", nargs="+", default=["auto", "1"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000, help="training images (0: the whole training set)")
    ap.add_argument("--update", default="", help="hardware.update of the hardware runs (default: the config's); "
                    "results go to benchmarks/results/hil_presets_<update>.json")
    args = ap.parse_args()
    OUT = ROOT / "benchmarks/results" / (f"hil_presets_{args.update}.json" if args.update else "hil_presets.json")
    torch.set_num_threads(2)
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    setup = {"epochs": args.epochs, "n_train": args.n_train, "w_max": args.w_max, "update": args.update or None}
    if {k: res.get(k) for k in setup} != setup:
        res = {**setup, "configs": {}}
    for cfg_name in args.configs:
        path = ROOT / "configs/hil" / f"{cfg_name}.toml"
        c = res["configs"].setdefault(cfg_name, {"reference": {}, "devices": {}})
        for seed in args.seeds:
            over = [f"train.seed={seed}", f"hardware.seed={seed}", f"train.epochs={args.epochs}",
                    f"train.decay_epochs={args.epochs}", "train.progress=false", "output.checkpoint=false",
                    *([f"data.n_train={args.n_train}"] if args.n_train else []),
                    f'output.dir="{ROOT / "runs/bench/hil_presets/ref"}"']
            ref = Trainer(load_config(path, over), overwrite=True)
            if str(seed) not in c["reference"]:
                c["reference"][str(seed)] = ref.fit(log=None)[-1]["test_acc"]
            acc_ref = c["reference"][str(seed)]
            for dev in args.devices:
                for m in args.w_max:
                    r = c["devices"].setdefault(dev, {}).setdefault(str(m), {"seeds": {}})
                    if str(seed) in r["seeds"]:
                        continue
                    cfg = load_config(path, [*over, f'hardware.device="{dev}"',
                                             f'hardware.w_max={json.dumps(m) if m == "auto" else m}',
                                             *([f'hardware.update="{args.update}"'] if args.update else []),
                                             f'output.dir="{ROOT / "runs/bench/hil_presets/hw"}"'])
                    t0 = time.perf_counter()
                    tr = HardwareTrainer(cfg, dataset=ref.dataset)
                    hist = tr.fit(log=None)
                    last = hist[-1]
                    r["seeds"][str(seed)] = {
                        "acc": 100 * last["test_acc"], "gap": 100 * (acc_ref - last["test_acc"]),
                        "pulses_per_epoch": statistics.fmean(h["pulses"] for h in hist),
                        "energy_per_epoch_J": statistics.fmean(h["energy_J"] for h in hist),
                        "saturated_fraction": last["saturated_fraction"],
                        "w_max_per_array": {k: tr.hw.card.g_range / g for k, g in tr.hw.g0s.items()},
                        "time_s": time.perf_counter() - t0}
                    s = r["seeds"].values()
                    r.update(acc_mean=statistics.fmean(v["acc"] for v in s),
                             gap_mean=statistics.fmean(v["gap"] for v in s),
                             pulses_per_epoch=statistics.fmean(v["pulses_per_epoch"] for v in s))
                    c["reference_mean"] = 100 * statistics.fmean(c["reference"].values())
                    atomic_write(OUT, lambda f: f.write(json.dumps(res, indent=1).encode()))
                    print(f"{cfg_name} seed {seed} {dev} w_max={m}: {r['seeds'][str(seed)]['acc']:.2f} % "
                          f"(gap {r['seeds'][str(seed)]['gap']:+.2f})", flush=True)
    md = table(res)
    atomic_write(OUT.with_suffix(".md"), lambda f: f.write(md.encode()))
    print(md)


if __name__ == "__main__":
    main()
