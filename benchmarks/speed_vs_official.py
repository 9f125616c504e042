"""neuromorph vs the paper's own code on its MNIST recipe, same machine, same run.

Recipe (issue #2): 784-512-10, σ(x) = 1/(1+e^(−4(x−0.5))), squared error, T=30, K=10, β=0.1,
three phases (symmetric estimate), batch 50, Adam with learning rate 5e-4 on both layers,
one epoch of the 60,000 MNIST training images. The baseline is
``benchmarks/official_style_mlp.py`` (autograd of Φ at every step, as the official
``P_MLP.forward``; reported at ~1,800 samples/s on a 2-core machine). Each side runs in its own
process, one after the other, so they never compete for the two cores.

    python benchmarks/speed_vs_official.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def neuromorph_run(epochs: int) -> dict:
    code = (
        "import json, torch\n"
        "from neuromorph.config import load_config\n"
        "from neuromorph.train import Trainer\n"
        "torch.set_num_threads(2)\n"
        f"cfg = load_config('{ROOT}/configs/mnist_official_recipe.toml', ['train.epochs={epochs}', "
        f"'train.progress=false', 'output.dir=\"{ROOT}/runs/bench/official-recipe\"'])\n"
        "h = Trainer(cfg).fit(log=None)\n"
        "print(json.dumps(h))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    hist = json.loads(out.strip().splitlines()[-1])
    return {"samples_per_s": hist[-1]["samples_per_s"], "s_per_epoch": hist[-1]["train_time_s"],
            "test_acc": hist[-1]["test_acc"]}


def official_run(epochs: int) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/official_style_mlp.py"), "--epochs", str(epochs)],
                         capture_output=True, text=True, check=True).stdout
    m = re.findall(r"train (\d+) samples in ([\d.]+) s = (\d+) samples/s.*test acc ([\d.]+)", out)[-1]
    return {"samples_per_s": float(m[2]), "s_per_epoch": float(m[1]), "test_acc": float(m[3])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    ours = neuromorph_run(args.epochs)
    base = official_run(args.epochs)
    print(f"{'implementation':<34}{'samples/s':>11}{'s/epoch':>9}{'test acc':>10}")
    print(f"{'official style (autograd per step)':<34}{base['samples_per_s']:>11.0f}{base['s_per_epoch']:>9.1f}"
          f"{base['test_acc']:>10.4f}")
    print(f"{'neuromorph (explicit, batched ±β)':<34}{ours['samples_per_s']:>11.0f}{ours['s_per_epoch']:>9.1f}"
          f"{ours['test_acc']:>10.4f}")
    print(f"speed-up: {ours['samples_per_s'] / base['samples_per_s']:.1f}x on this machine; "
          f"{ours['samples_per_s'] / 1800:.1f}x the reported 1,800 samples/s of the official code")
    res = ROOT / "benchmarks/results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "speed_vs_official.json").write_text(json.dumps({"neuromorph": ours, "official_style": base}, indent=1))
    print("command: python benchmarks/speed_vs_official.py --epochs", args.epochs)


if __name__ == "__main__":
    main()
