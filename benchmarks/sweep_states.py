"""Sweep benchmark: conductance states x cycle-to-cycle noise on MNIST (configs/sweeps/mnist_states_c2c.toml), run
serially and in the process pool, with the wall-clock time of each and a check that both give the same table.

Each mode starts from an empty table (``OUT/<mode>/results.sqlite``; ``--resume`` keeps a table and times only the
missing runs). Results: ``OUT/sweep_states.json`` and ``OUT/sweep_states.md`` (times, speed-up, the accuracy per
point), figures of the serial table under ``OUT/figures/``.

    python benchmarks/sweep_states.py [--modes serial pool] [--workers 2] [--set data.n_train=10000 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from neuromorph.sweep import RESULTS, format_summary, load_sweep, read_results, run_sweep
from neuromorph.sweep_plots import plot_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs/sweeps/mnist_states_c2c.toml"
OUT = ROOT / "benchmarks/results/sweep_states"


def _max_diff(a: list[dict], b: list[dict]) -> float:
    """Largest |difference| of the final test accuracies of the runs both tables finished."""
    tb = {r["run_id"]: r for r in b}
    diffs = [abs(r["test_acc"] - tb[r["run_id"]]["test_acc"]) for r in a
             if r["status"] == "done" and tb.get(r["run_id"], {}).get("status") == "done"]
    return max(diffs, default=float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, default=SWEEP)
    ap.add_argument("--modes", nargs="+", choices=("serial", "pool"), default=["serial", "pool"])
    ap.add_argument("--workers", type=int, default=2, help="pool processes (default 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--resume", action="store_true", help="keep existing tables (times then cover the rest only)")
    args = ap.parse_args()

    sweep = load_sweep(args.sweep, args.set)
    report = {"sweep": str(args.sweep), "overrides": args.set, "runs": len(sweep.runs), "points": sweep.n_points,
              "seeds": list(sweep.seeds), "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "modes": {}}
    for mode in args.modes:
        out = args.out / mode
        if out.exists() and not args.resume:
            shutil.rmtree(out)
        t0 = time.perf_counter()
        counts = run_sweep(sweep, out, workers=1 if mode == "serial" else args.workers)
        wall = time.perf_counter() - t0
        report["modes"][mode] = {"workers": 1 if mode == "serial" else args.workers, "wall_s": wall,
                                 "ran": counts["ran"], "failed": counts["failed"], "resumed": counts["skipped"] > 0}
        print(f"{mode}: {counts['ran']} runs in {wall:.1f}s", flush=True)
    tables = {m: read_results(args.out / m / RESULTS) for m in args.modes}
    first = args.modes[0]
    if len(args.modes) == 2:
        s, p = (report["modes"][m]["wall_s"] for m in ("serial", "pool"))
        report["speedup"] = s / p
        report["max_abs_diff_test_acc"] = _max_diff(tables["serial"][1], tables["pool"][1])
    meta, rows = tables[first]
    figures = plot_sweep(args.out / first / RESULTS, args.out / "figures")
    summary = format_summary(rows, [a[0] for a in meta["axes"]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_states.json").write_text(json.dumps(report, indent=1))
    md = [f"# Sweep benchmark: {sweep.name}", "", f"{len(sweep.runs)} runs ({sweep.n_points} points x "
          f"{len(sweep.seeds)} seeds + references), {os.cpu_count()} CPUs, one torch thread per run.", "",
          "| mode | workers | wall-clock (s) |", "|---|---|---|"]
    md += [f"| {m} | {v['workers']} | {v['wall_s']:.1f}{' (resumed)' if v['resumed'] else ''} |"
           for m, v in report["modes"].items()]
    if "speedup" in report:
        md += ["", f"Speed-up of the pool: {report['speedup']:.2f}x; largest difference of a final test accuracy "
               f"between the two tables: {report['max_abs_diff_test_acc']:.2g}."]
    md += ["", "```", summary, "```", "", "Figures: " + ", ".join(str(f.relative_to(args.out)) for f in figures)]
    (args.out / "sweep_states.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
