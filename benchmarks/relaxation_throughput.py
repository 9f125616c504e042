"""Throughput of the relaxation loop against this machine's own matmul peak.

Runs the free phase (T synchronous steps, no autograd) of layered networks and counts the
floating-point work of the products it does: per step, every coupling between two state layers
is read forward and transposed (``2 · 2·B·n_pre·n_post`` flops); the input drive ``w_1 x`` is
computed once per phase and counted once. The reference is a square float32 matmul
(``torch.mm``) of the same machine, measured in the same run.

    python benchmarks/relaxation_throughput.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from neuromorph.dynamics import relax
from neuromorph.network import LayeredNetwork


def best_time(fn, repeat: int = 5, number: int = 1) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def matmul_gflops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), number=5) / 1e9


def relax_gflops(sizes, batch: int, T: int, loss: str = "mse") -> tuple[float, float]:
    net = LayeredNetwork(sizes, loss=loss, activation="half_hard_sigmoid", seed=0)
    x = torch.rand(batch, sizes[0])

    def run():
        with torch.no_grad():
            d = net.input_drive(x)
            relax(net, d, net.zero_state(batch), T)

    t = best_time(run, repeat=5)
    chain = net.state_sizes
    per_step = sum(2 * 2 * batch * a * b for a, b in zip(chain[:-1], chain[1:]))
    flops = 2 * batch * sizes[0] * chain[0] + T * per_step
    return flops / t / 1e9, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32 matmul 1024x1024: {peak:.1f} GFLOP/s")
    print(f"{'network':<26}{'batch':>6}{'T':>5}{'time/phase (ms)':>17}{'GFLOP/s':>10}{'% of matmul':>13}")
    cases = [([784, 512, 10], 50, 30), ([784, 512, 10], 100, 10), ([784, 512, 512, 10], 50, 40),
             ([784, 1024, 1024, 10], 256, 30), ([784, 2048, 2048, 2048, 10], 512, 30)]
    for sizes, batch, T in cases:
        g, t = relax_gflops(sizes, batch, T)
        print(f"{'-'.join(map(str, sizes)):<26}{batch:>6}{T:>5}{t * 1e3:>17.2f}{g:>10.1f}{100 * g / peak:>12.0f}%")
    print("command: python benchmarks/relaxation_throughput.py --threads", args.threads)


if __name__ == "__main__":
    main()
