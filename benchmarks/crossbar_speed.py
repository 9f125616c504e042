"""Crossbar speed: programming one update of a 1024x1024 differential array and one forward + transpose read of it.

Per preset (both devices of every pair simulated, with the preset's device-to-device variability, cycle-to-cycle
and write noise, plus read noise ``--read-noise`` x g_max added to the card when the preset has none):

* ``program (stochastic rounding)``: one update request ``ΔW ~ N(0, (2 dw)^2)`` -> pulses -> both devices;
* ``program_outer (pulse train, B)``: aihwkit-style stochastic pulse trains (BL = 31, update management) for a
  rank-B update;
* ``forward + transpose (B)``: ``y = W x`` then ``x' = Wᵀ y`` through DACs (8 bit), per-tile ADCs (8 bit),
  256x256 tiles, fresh read noise, for a batch of B inputs (B = 1 and 64).

Each is timed (median of ``--repeats`` after a warm-up) next to a plain float32 ``torch.mm`` of two 1024x1024
matrices measured in the same run (and, for the reads, the float product of the same shape, ``(B,1024)x(1024,1024)``
twice). Run on 2 threads (``--threads``)::

    OMP_NUM_THREADS=2 python benchmarks/crossbar_speed.py [--presets reram_es taox_hfox] [--threads 2]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import replace

import torch

from neuromorph.crossbar import CrossbarLayer, Periphery
from neuromorph.devices import load_card

N = 1024


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` [s] over ``repeats`` runs after one warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_preset(name: str, args: argparse.Namespace, t_ref: dict[int, float]) -> list[tuple]:
    """Rows (preset, operation, time [s], ratio to the same-shape float product or None) for one preset."""
    card = load_card(name)
    if card.read_noise_std == 0 and args.read_noise > 0:
        card = replace(card, read_noise_std=args.read_noise)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    periphery = Periphery(dac_bits=8, adc_bits=8, adc_range=16.0, x_max=1.0)
    layer = CrossbarLayer(N, N, card, periphery, tuple(args.tile), generator=gen)
    layer.set_weights(0.3 * torch.randn(N, N, generator=gen).clamp(-3, 3), count=False)
    t_build = time.perf_counter() - t0
    dw = layer.array.dw
    dW = 2 * dw * torch.randn(N, N, generator=gen)
    x1, d1 = torch.rand(1, N, generator=gen), torch.randn(1, N, generator=gen)
    x64, d64 = torch.rand(64, N, generator=gen), torch.randn(64, N, generator=gen)
    lr = 4 * dw
    rows: list[tuple] = [
        (name, "build + place weights (once)", t_build, None),
        (name, "program (stochastic rounding)", timeit(lambda: layer.program(dW), args.repeats), None),
        (name, "program_outer (pulse train, B=1)", timeit(lambda: layer.program_outer(x1, d1, lr), args.repeats),
         None),
        (name, "program_outer (pulse train, B=64)",
         timeit(lambda: layer.program_outer(x64, d64, lr / 64), args.repeats), None),
    ]
    for bs, x in ((1, x1), (64, x64)):
        t = timeit(lambda x=x: layer.transpose(layer.forward(x)), args.repeats)
        rows.append((name, f"forward + transpose (B={bs})", t, t / t_ref[bs]))
    s = layer.stats()
    print(f"{name}: card model {card.model}, dw = {dw:.3g}, read noise {card.read_noise_std:g} g_max, "
          f"pulses so far {s['pulses']}, device reads {s['reads']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["reram_es", "taox_hfox"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--read-noise", type=float, default=0.005, help="read noise std / g_max added to cards without")
    ap.add_argument("--tile", type=int, nargs=2, default=[256, 256], metavar=("ROWS", "COLS"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, {N}x{N} weights, "
          f"tiles {args.tile[0]}x{args.tile[1]}, median of {args.repeats}")

    a = torch.randn(N, N)
    b = torch.randn(N, N)
    t_mm = timeit(lambda: torch.mm(a, b), args.repeats)
    xs = {bs: torch.rand(bs, N) for bs in (1, 64)}
    t_ref = {bs: timeit(lambda bs=bs: (xs[bs] @ a.T) @ a, args.repeats) for bs in (1, 64)}

    rows: list[tuple[str, str, float, float | None]] = [
        ("-", f"torch.mm ({N}x{N}) x ({N}x{N})", t_mm, None),
        ("-", "float x Wᵀ then y W, B=1", t_ref[1], None),
        ("-", "float x Wᵀ then y W, B=64", t_ref[64], None),
    ]
    for name in args.presets:
        rows.extend(bench_preset(name, args, t_ref))
    print()
    print(f"{'preset':<11}{'operation':<38}{'time [ms]':>11}{'/ torch.mm':>12}{'/ same-shape float':>20}")
    for name, op, t, same in rows:
        same_s = f"{same:>20.1f}" if same is not None else f"{'':>20}"
        print(f"{name:<11}{op:<38}{1e3 * t:>11.2f}{t / t_mm:>12.2f}{same_s}")


if __name__ == "__main__":
    main()
