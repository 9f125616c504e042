"""Throughput of the relaxation loop against this machine's own matmul and convolution peaks.

Runs the free phase (T synchronous steps, no autograd) of layered networks and counts the
floating-point work of the products it does: per step, every coupling between two state layers
is read forward and transposed (dense: ``2 · 2·B·n_pre·n_post`` flops; convolution:
``2 · 2·B·C_out·H_c·W_c·C_in·F²``, ``H_c x W_c`` the convolution's output before pooling); the
input drive ``w_1 x`` (``w_1 ⋆ x``) is computed once per phase and counted once. Pooling,
unpooling, the constants and the nonlinearity are not counted: they are what the loop pays beyond
its products. The references are measured in the same run: a square float32 matmul
(``torch.mm``) and a large single float32 ``conv2d`` (3x3, channels-last, oneDNN).

The ConvNet is the paper's (``configs/table1/xent_symmetric.toml``: 3x32x32 → 128-256-512-512, 3x3,
paddings 1 1 1 0, 2x2 max-pooling, softmax read-out) at batch 128 (a free phase) and 256 (the ±β
phases run as one batch); the same network on the plain path (``ConvPool.hot_dtypes = ()``: NCHW,
``max_pool2d``/``max_unpool2d`` and ``conv2d_input`` per step, the implementation before the hot
path) is timed too.

    python benchmarks/relaxation_throughput.py [--threads 2] [--conv-steps 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from neuromorph.dynamics import relax
from neuromorph.network import ConvPool, Dense, LayeredNetwork

PAPER_CONV = [(128, 3, 1), (256, 3, 1), (512, 3, 1), (512, 3, 0)]


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


def conv_gflops(batch: int = 64, c: int = 256, hw: int = 16) -> float:
    """A large single float32 3x3 convolution (padding 1), channels-last: this machine's convolution peak."""
    x = torch.randn(batch, c, hw, hw).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3) / (9 * c) ** 0.5).contiguous(memory_format=torch.channels_last)
    return 2 * batch * c * hw * hw * c * 9 / best_time(lambda: torch.nn.functional.conv2d(x, w, padding=1)) / 1e9


def conv_net_flops(net: LayeredNetwork, batch: int, T: int) -> float:
    """The products of a free phase of ``T`` steps: the input drive once, every coupling forward and transposed."""
    shape, per_syn = net.input_shape, []
    for syn in net.synapses:
        if isinstance(syn, ConvPool):
            c_out, ho, wo = syn.conv_shape(shape)
            per_syn.append(2 * batch * c_out * ho * wo * syn.c_in * syn.kernel**2)
            shape = syn.out_shape(shape)
        else:
            assert isinstance(syn, Dense)
            per_syn.append(2 * batch * syn.n_pre * syn.n_post)
            shape = (syn.n_post,)
    return per_syn[0] + T * 2 * sum(per_syn[1:])


def conv_relax_gflops(batch: int, T: int, hot: bool = True, repeat: int = 3) -> tuple[float, float]:
    net = LayeredNetwork([10], loss="xent", activation="half_hard_sigmoid", seed=0, input_shape=(3, 32, 32),
                         conv=PAPER_CONV)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    saved = ConvPool.hot_dtypes
    ConvPool.hot_dtypes = saved if hot else ()

    def run():
        with torch.no_grad():
            relax(net, net.input_drive(x), net.zero_state(batch), T)

    try:
        t = best_time(run, repeat=repeat)
    finally:
        ConvPool.hot_dtypes = saved
    return conv_net_flops(net, batch, T) / t / 1e9, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conv-steps", type=int, default=8, help="free-phase steps of the ConvNet runs")
    ap.add_argument("--no-mlp", action="store_true", help="only the ConvNet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    cpeak = conv_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32 matmul 1024x1024: {peak:.1f} GFLOP/s; float32 conv2d 64x256x16x16 -> 256, 3x3, channels-last: "
          f"{cpeak:.1f} GFLOP/s")
    T = args.conv_steps
    print(f"{'paper ConvNet (free phase)':<40}{'batch':>6}{'T':>5}{'s/step':>9}{'GFLOP/s':>10}{'% of conv':>11}"
          f"{'% of matmul':>13}")
    for label, batch, hot in (("hot path", 128, True), ("hot path", 256, True), ("plain path (before)", 128, False)):
        g, t = conv_relax_gflops(batch, T, hot)
        print(f"{label:<40}{batch:>6}{T:>5}{t / T:>9.3f}{g:>10.1f}{100 * g / cpeak:>10.0f}%{100 * g / peak:>12.0f}%")
    command = (f"command: python benchmarks/relaxation_throughput.py --threads {args.threads} --conv-steps {T}"
               + (" --no-mlp" if args.no_mlp else ""))
    if args.no_mlp:
        print(command)
        return
    print(f"{'network':<26}{'batch':>6}{'T':>5}{'time/phase (ms)':>17}{'GFLOP/s':>10}{'% of matmul':>13}")
    cases = [([784, 512, 10], 50, 30), ([784, 512, 10], 100, 10), ([784, 512, 512, 10], 50, 40),
             ([784, 1024, 1024, 10], 256, 30), ([784, 2048, 2048, 2048, 10], 512, 30)]
    for sizes, batch, T in cases:
        g, t = relax_gflops(sizes, batch, T)
        print(f"{'-'.join(map(str, sizes)):<26}{batch:>6}{T:>5}{t * 1e3:>17.2f}{g:>10.1f}{100 * g / peak:>12.0f}%")
    print(command)


if __name__ == "__main__":
    main()
