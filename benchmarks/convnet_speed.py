"""neuromorph vs the official code's style on the paper's CIFAR-10 ConvNet, same machine, same run.

Recipe: ``configs/table1/xent_symmetric.toml`` (Table 1, cross-entropy read-out, symmetric estimate): four 3x3
conv layers 128-256-512-512 (paddings 1 1 1 0), each with 2x2 max-pooling, a softmax read-out to 10 classes,
half hard sigmoid, T = 250 free steps, K = 25 steps per nudged phase, β = ±1, batch 128, SGD with momentum 0.9 and
weight decay 3e-4. One timed batch is one full EP iteration: the free phase, both nudged phases, the update and the
optimizer step.

* neuromorph: :func:`neuromorph.estimators.ep_gradients` (the explicit, autograd-free relaxation; the ±β phases
  run together as one batch of 2B) and the SGD step of :func:`neuromorph.train.make_optimizer`, as
  ``IdealSubstrate.step`` does in training. The free phase and the rest are also timed apart.
* official style: ``benchmarks/official_style_convnet.py`` (autograd of Φ at every step, the three phases one after
  the other, as the official ``P_CNN`` and ``train --thirdphase``).

Inputs: the first ``batches x batch`` CIFAR-10 training images (``../shared/data`` or ``$NEUROMORPH_DATA``), each
side normalised as its recipe does (neuromorph: the training set's per-channel mean and std; official: mean
(0.4914, 0.4822, 0.4465), std 3 x (0.2023, 0.1994, 0.2010)); no augmentation (it does not change the work). Real
images rather than random ones: the max-pooling switches, hence the unpooling's memory traffic, depend on them.
``--random`` uses uniform random inputs instead.

Each side runs in its own process (they never compete for the cores), alternating, ``--repeats`` times; the table
gives the median s/batch of each side and the ratio, with every run. Timings on a shared machine vary: the load
average is printed with each run.

    python benchmarks/convnet_speed.py [--repeats 2] [--batches 1] [--threads 2]
    python benchmarks/convnet_speed.py --repeats 1 --T 20 --K 5      # a quick check (not the recipe)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from official_style_mlp import load_avg  # noqa: E402

CONFIG = ROOT / "configs/table1/xent_symmetric.toml"
# per-channel mean and std of the CIFAR-10 training set on the 0-255 scale (shared/data/README.md)
CIFAR_MEAN, CIFAR_STD = (125.307, 122.950, 113.865), (62.993, 62.089, 66.705)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ours_side(args) -> dict:
    """The neuromorph side (run in its own process): s/batch of full EP iterations."""
    import torch

    from neuromorph.config import load_config
    from neuromorph.data import load_dataset, normalize
    from neuromorph.dynamics import relax
    from neuromorph.estimators import ep_gradients, make_estimator
    from neuromorph.train import build_network, make_optimizer

    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG, [f"ep.T={args.T}", f"ep.K={args.K}", f"train.batch_size={args.batch}"])
    net = build_network(cfg, 3 * 32 * 32, 10, (3, 32, 32))
    opt = make_optimizer(net, cfg)
    est = make_estimator(cfg.ep.estimator, cfg.ep.beta)
    params = net.param_list()
    n = args.batches * args.batch
    g = torch.Generator().manual_seed(0)
    if args.random:
        x, y = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    else:
        data = load_dataset("cifar10", n_train=n, n_test=1)
        mean, std = torch.tensor(CIFAR_MEAN) / 255, torch.tensor(CIFAR_STD) / 255
        x, y = normalize(data.x_train, mean, std), data.y_train
    sign_gen = torch.Generator().manual_seed(1)
    runs = []
    for b in range(args.batches):
        xb, yb = x[b * args.batch:(b + 1) * args.batch], y[b * args.batch:(b + 1) * args.batch]
        t0 = time.perf_counter()
        with torch.no_grad():
            drive = net.input_drive(xb)
            free = relax(net, drive, net.zero_state(args.batch), cfg.ep.T)
        t1 = time.perf_counter()
        res = ep_gradients(net, xb, yb, est, cfg.ep.T, cfg.ep.K, generator=sign_gen, free=free, drive=drive,
                           rule=cfg.ep.rule)
        for p, gr in zip(params, res.grads):
            p.grad = gr
        opt.step()
        t2 = time.perf_counter()
        runs.append({"s_per_batch": t2 - t0, "free_s": t1 - t0, "nudged_update_s": t2 - t1})
    return {"runs": runs, "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_ours(args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "ours", "--batches", str(args.batches),
           "--batch", str(args.batch), "--T", str(args.T), "--K", str(args.K), "--threads", str(args.threads)]
    if args.random:
        cmd.append("--random")
    load = load_avg()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    res = json.loads(out.strip().splitlines()[-1])
    times = [r["s_per_batch"] for r in res["runs"]]
    return {"s_per_batch": statistics.mean(times), "batches": res["runs"], "load_at_start": load}


def run_official(args) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks/official_style_convnet.py"), "--batches", str(args.batches),
           "--batch", str(args.batch), "--T1", str(args.T), "--T2", str(args.K), "--threads", str(args.threads)]
    if args.random:
        cmd.append("--random")
    load = load_avg()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    times = [float(t) for t in re.findall(r"batch \d+/\d+: ([\d.]+) s", out)]
    return {"s_per_batch": statistics.mean(times), "batches": times, "load_at_start": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("--batches", type=int, default=1, help="timed EP iterations per run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--T", type=int, default=250, help="free-phase steps (the recipe: 250)")
    ap.add_argument("--K", type=int, default=25, help="steps of each nudged phase (the recipe: 25)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random", action="store_true", help="uniform random inputs instead of CIFAR-10 images")
    ap.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/convnet_speed.json"))
    args = ap.parse_args()
    if args.side == "ours":
        print(json.dumps(ours_side(args)))
        return
    command = shlex.join(["python", "benchmarks/convnet_speed.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, {args.threads} threads; recipe {CONFIG.relative_to(ROOT)} "
          f"(T={args.T}, K={args.K}, batch {args.batch}); inputs: {'random' if args.random else 'CIFAR-10'}")
    runs: dict[str, list[dict]] = {"ours": [], "official": []}
    for r in range(args.repeats):
        for key, fn in (("official", run_official), ("ours", run_ours)):
            res = fn(args)
            runs[key].append(res)
            extra = ""
            if key == "ours":
                b = res["batches"]
                extra = (f" (free phase {statistics.mean(x['free_s'] for x in b):.1f} s, nudged phases + update "
                         f"{statistics.mean(x['nudged_update_s'] for x in b):.1f} s)")
            print(f"  repeat {r + 1}: {key:<9} {res['s_per_batch']:8.2f} s/batch{extra}; load at start "
                  f"{res['load_at_start']}", flush=True)
    summary = {"command": command, "machine": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
               "recipe": str(CONFIG.relative_to(ROOT)), "T": args.T, "K": args.K, "batch": args.batch,
               "inputs": "random" if args.random else "CIFAR-10 training images", "runs": runs}
    for key in runs:
        sb = [r["s_per_batch"] for r in runs[key]]
        summary[key] = {"median_s_per_batch": statistics.median(sb), "best_s_per_batch": min(sb), "all": sb}
    ratio = summary["official"]["median_s_per_batch"] / summary["ours"]["median_s_per_batch"]
    summary["speedup_median"] = ratio
    summary["speedup_best"] = summary["official"]["best_s_per_batch"] / summary["ours"]["best_s_per_batch"]
    print(f"{'implementation':<40}{'median s/batch':>15}{'best':>9}   all runs")
    labels = {"official": "official style (autograd per step)", "ours": "neuromorph (explicit, ±β batched)"}
    for key, label in labels.items():
        s = summary[key]
        print(f"{label:<40}{s['median_s_per_batch']:>15.2f}{s['best_s_per_batch']:>9.2f}   "
              f"{' '.join(f'{v:.2f}' for v in s['all'])}")
    print(f"speed-up: {ratio:.2f}x (medians), {summary['speedup_best']:.2f}x (best runs) on this machine")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
