"""Where a relaxation step of the paper's ConvNet spends its time: torch.profiler, hot path vs plain path.

The network of ``configs/table1/xent_symmetric.toml`` (3x32x32 → 128-256-512-512, 3x3 convolutions with paddings
1 1 1 0, 2x2 max-pooling, softmax read-out), a free phase of ``--steps`` steps at batch ``--batch`` (after one
warm-up phase), once on the hot path of :class:`neuromorph.network.ConvPool` and once on the plain path
(``ConvPool.hot_dtypes = ()``: NCHW tensors, ``max_pool2d``/``max_unpool2d`` and ``conv2d_input`` each step, the
implementation before the hot path). The self time of every operator is summed into groups, per step:

* conv forward: ``mkldnn_convolution`` (the three forward products);
* conv transposed: ``convolution_backward`` (plain: ``conv2d_input``) or the oneDNN transposed convolution run
  inside ``_convolution`` (hot: ``conv_transpose2d``);
* im2col product: ``mm`` (hot: the last layer's 4x4 → 2x2 convolution both ways);
* pool / unpool: ``max_pool2d_with_indices``; ``max_unpool2d`` and the ``fill_`` that zeroes its output;
* the rest: constants, accumulations, the nonlinearity, copies, allocations.

    python benchmarks/profile_conv_step.py [--batch 128] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from neuromorph.dynamics import relax
from neuromorph.network import ConvPool, LayeredNetwork

PAPER_CONV = [(128, 3, 1), (256, 3, 1), (512, 3, 1), (512, 3, 0)]
GROUPS = {
    "aten::mkldnn_convolution": "conv forward",
    "aten::convolution_backward": "conv transposed",
    "aten::_convolution": "conv transposed",
    "aten::mm": "im2col product",
    "aten::max_pool2d_with_indices": "pool",
    "aten::max_unpool2d": "unpool (+ zero fill)",
    "aten::fill_": "unpool (+ zero fill)",
}
ORDER = ["conv forward", "conv transposed", "im2col product", "pool", "unpool (+ zero fill)", "the rest"]


def profile_path(net: LayeredNetwork, x: torch.Tensor, steps: int, hot: bool) -> tuple[float, dict]:
    saved = ConvPool.hot_dtypes
    ConvPool.hot_dtypes = saved if hot else ()
    try:
        with torch.no_grad():
            d = net.input_drive(x)
            relax(net, d, net.zero_state(x.shape[0]), 2)  # warm-up: oneDNN primitives, buffers
            t0 = time.perf_counter()
            relax(net, d, net.zero_state(x.shape[0]), steps)
            wall = (time.perf_counter() - t0) / steps
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                relax(net, d, net.zero_state(x.shape[0]), steps)
    finally:
        ConvPool.hot_dtypes = saved
    groups: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        groups[GROUPS.get(ev.key, "the rest")] += ev.self_cpu_time_total / 1e3 / steps  # ms per step
    return wall, groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = LayeredNetwork([10], loss="xent", activation="half_hard_sigmoid", seed=0, input_shape=(3, 32, 32),
                         conv=PAPER_CONV)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = {}
    for label, hot in (("plain path (before)", False), ("hot path", True)):
        rows[label] = profile_path(net, x, args.steps, hot)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps "
          "(free phase, the first step from the zero state included); ms per step, operator self time")
    print(f"{'':<24}" + "".join(f"{label:>22}" for label in rows))
    for g in ORDER:
        print(f"{g:<24}" + "".join(f"{r[1].get(g, 0.0):>22.1f}" for r in rows.values()))
    print(f"{'total (profiled)':<24}" + "".join(f"{sum(r[1].values()):>22.1f}" for r in rows.values()))
    print(f"{'wall, not profiled':<24}" + "".join(f"{1e3 * r[0]:>22.1f}" for r in rows.values()))
    print(f"command: python benchmarks/profile_conv_step.py --batch {args.batch} --steps {args.steps} "
          f"--threads {args.threads}")


if __name__ == "__main__":
    main()
