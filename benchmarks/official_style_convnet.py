"""Same-machine baseline: EP on the paper's CIFAR-10 ConvNet in the style of the official code.

What this is
------------
A small, self-contained re-implementation (our own code, not a copy) of the *algorithmic style*
of the official implementation of Laborieux et al. (2021), "Scaling Equilibrium Propagation to
Deep ConvNets by Drastically Reducing its Gradient Estimator Bias"
(github.com/Laborieux-Axel/Equilibrium-Propagation: class ``P_CNN`` of ``model_utils.py`` with
``softmax=True`` and the ``train`` loop with ``--thirdphase``), ported the same way as
``benchmarks/official_style_mlp.py`` ports ``P_MLP``:

* synapses are ``torch.nn.Conv2d`` layers (3x3, stride 1, paddings 1 1 1 0, bias on, PyTorch
  default init) each followed by ``torch.nn.MaxPool2d(2, stride=2)``, then a
  ``torch.nn.Linear(512, 10)`` read-out (bias on) that is *not* part of the system;
* the primitive function, per sample, is
  ``Phi = sum_n <P(conv_n(s_{n-1})), s_n> - beta * CE(readout(s_N), y)``
  (the loss term only when beta != 0);
* every relaxation step recomputes Phi and takes ``torch.autograd.grad(Phi, neurons)`` with a
  fresh ``grad_outputs`` tensor of ones; every layer is then set to ``sigma(dPhi/ds)`` and marked
  ``requires_grad`` again, sigma the official ``my_hard_sig`` = ``(1 + hardtanh(x - 1)) / 2``;
* phases run one after the other: free phase (beta = 0, T1 = 250 from the zero state), a +beta
  phase (T2 = 25) continuing from the free fixed point, a -beta phase (T2 = 25) restarted from a
  copy of the free fixed point ("thirdphase"), beta = 1;
* the update is autograd of Phi at the two nudged states,
  ``backward(-(mean Phi(s^+, +beta) - mean Phi(s^-, -beta)) / (2 beta))`` (``compute_syn_grads``),
  then SGD with momentum 0.9, weight decay 3e-4 and the per-layer rates 0.25 0.15 0.1 0.08 0.05.

The official command (its README, "cel --softmax" row, = ``configs/table1/xent_symmetric.toml``)::

    python main.py --model 'CNN' --task 'CIFAR10' --data-aug --channels 128 256 512 512 --kernels 3 3 3 3
      --pools 'mmmm' --strides 1 1 1 1 --paddings 1 1 1 0 --fc 10 --optim 'sgd'
      --lrs 0.25 0.15 0.1 0.08 0.05 --wds 3e-4 3e-4 3e-4 3e-4 3e-4 --mmt 0.9 --lr-decay --epochs 120
      --act 'my_hard_sig' --todo 'train' --T1 250 --T2 25 --mbs 128 --alg 'EP' --betas 0.0 1.0
      --thirdphase --loss 'cel' --softmax --save --device 0

Inputs are CIFAR-10 training images read with :func:`neuromorph.data.load_dataset` (from
``../shared/data`` or ``$NEUROMORPH_DATA``), normalised as the official loader does (mean
(0.4914, 0.4822, 0.4465), std 3 x (0.2023, 0.1994, 0.2010)); no augmentation (it does not change
the work per batch). ``--random`` uses uniform random inputs of the same shape instead (the
max-pooling argmax patterns, hence the memory traffic of the unpooling, differ a little).

Usage::

    .venv/bin/python benchmarks/official_style_convnet.py --batches 1           # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/official_style_convnet.py --batches 1 --T1 20 --T2 5   # quick check
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from neuromorph.data import load_dataset
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from neuromorph.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_style_mlp import load_avg  # noqa: E402

CHANNELS = (3, 128, 256, 512, 512)
KERNELS = (3, 3, 3, 3)
PADDINGS = (1, 1, 1, 0)
FC = (10,)
IN_SIZE = 32
T1, T2 = 250, 25
BETA = 1.0
BATCH = 128
LRS = (0.25, 0.15, 0.1, 0.08, 0.05)
WD, MOMENTUM = 3e-4, 0.9
MEAN, STD = (0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)


def my_hard_sig(x: torch.Tensor) -> torch.Tensor:
    """The official ``my_hard_sig``: ``(1 + hardtanh(x - 1)) / 2`` = clamp(x/2, 0, 1)."""
    return (1 + F.hardtanh(x - 1)) * 0.5


class OfficialStyleCNN(torch.nn.Module):
    """The official ``P_CNN`` with ``softmax=True``: conv + max-pool layers, a read-out outside Φ."""

    def __init__(self, activation=my_hard_sig) -> None:
        super().__init__()
        self.activation = activation
        self.pools = [torch.nn.MaxPool2d(2, stride=2) for _ in KERNELS]
        self.synapses = torch.nn.ModuleList()
        size = IN_SIZE
        for idx in range(len(CHANNELS) - 1):
            self.synapses.append(torch.nn.Conv2d(CHANNELS[idx], CHANNELS[idx + 1], KERNELS[idx], stride=1,
                                                 padding=PADDINGS[idx], bias=True))
            size = (size + 2 * PADDINGS[idx] - KERNELS[idx]) + 1  # size after conv
            size = (size - 2) // 2 + 1  # size after pool
        self.size = size
        fc_layers = [size * size * CHANNELS[-1], *FC]
        for idx in range(len(FC)):
            self.synapses.append(torch.nn.Linear(fc_layers[idx], fc_layers[idx + 1], bias=True))
        self.criterion = torch.nn.CrossEntropyLoss(reduction="none")

    def phi(self, x: torch.Tensor, y: torch.Tensor, neurons: list[torch.Tensor], beta: float) -> torch.Tensor:
        mbs = x.size(0)
        conv_len = len(KERNELS)
        layers = [x, *neurons]
        phi = 0.0
        for idx in range(conv_len):
            pooled = self.pools[idx](self.synapses[idx](layers[idx]))
            phi += torch.sum(pooled * layers[idx + 1], dim=(1, 2, 3)).squeeze()
        for idx in range(conv_len, len(self.synapses) - 1):
            phi += torch.sum(self.synapses[idx](layers[idx].view(mbs, -1)) * layers[idx + 1], dim=1).squeeze()
        if beta != 0.0:
            loss = self.criterion(self.synapses[-1](layers[-1].view(mbs, -1)).float(), y).squeeze()
            phi -= beta * loss
        return phi

    def forward(self, x, y, neurons: list[torch.Tensor], T: int, beta: float = 0.0) -> list[torch.Tensor]:
        mbs = x.size(0)
        for _ in range(T):
            phi = self.phi(x, y, neurons, beta)
            init_grads = torch.tensor([1 for _ in range(mbs)], dtype=torch.float, device=x.device, requires_grad=True)
            grads = torch.autograd.grad(phi, neurons, grad_outputs=init_grads, create_graph=False)
            for idx in range(len(neurons) - 1):
                neurons[idx] = self.activation(grads[idx])
                neurons[idx].requires_grad = True
            neurons[-1] = self.activation(grads[-1])  # softmax read-out: the last layer is a state layer
            neurons[-1].requires_grad = True
        return neurons

    def init_neurons(self, mbs: int) -> list[torch.Tensor]:
        neurons, size = [], IN_SIZE
        for idx in range(len(CHANNELS) - 1):
            size = (size + 2 * PADDINGS[idx] - KERNELS[idx]) + 1
            size = (size - 2) // 2 + 1
            neurons.append(torch.zeros((mbs, CHANNELS[idx + 1], size, size), requires_grad=True))
        for idx in range(len(FC) - 1):  # the output layer is removed from the system (softmax)
            neurons.append(torch.zeros((mbs, FC[idx]), requires_grad=True))
        return neurons

    def compute_syn_grads(self, x, y, neurons_1, neurons_2, betas: tuple[float, float]) -> None:
        beta_1, beta_2 = betas
        self.zero_grad()
        phi_1 = self.phi(x, y, neurons_1, beta_1).mean()
        phi_2 = self.phi(x, y, neurons_2, beta_2).mean()
        delta_phi = (phi_2 - phi_1) / (beta_1 - beta_2)
        delta_phi.backward()


def copy(neurons: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_like(n).copy_(n.data).requires_grad_() for n in neurons]


def train_step(model: OfficialStyleCNN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               t1: int = T1, t2: int = T2, beta: float = BETA) -> int:
    """One EP iteration of the official ``train`` (EP, thirdphase); returns #correct in the free phase."""
    neurons = model.init_neurons(x.size(0))
    neurons = model(x, y, neurons, t1, beta=0.0)
    neurons_1 = copy(neurons)
    with torch.no_grad():
        pred = torch.argmax(F.softmax(model.synapses[-1](neurons[-1].view(x.size(0), -1)), dim=1), dim=1).squeeze()
        correct = int((y == pred).sum())
    neurons = model(x, y, neurons, t2, beta=beta)
    neurons_2 = copy(neurons)
    neurons = copy(neurons_1)
    neurons = model(x, y, neurons, t2, beta=-beta)
    neurons_3 = copy(neurons)
    model.compute_syn_grads(x, y, neurons_2, neurons_3, (beta, -beta))
    opt.step()
    return correct


def make_optimizer(model: OfficialStyleCNN) -> torch.optim.Optimizer:
    groups = [{"params": syn.parameters(), "lr": lr, "weight_decay": WD} for syn, lr in zip(model.synapses, LRS)]
    return torch.optim.SGD(groups, momentum=MOMENTUM)


def cifar_batches(n: int, batch: int, random: bool, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of CIFAR-10 training images (official normalisation) or of uniform random inputs."""
    g = torch.Generator().manual_seed(seed)
    if random:
        shape = (batch, 3, IN_SIZE, IN_SIZE)
        return [(torch.rand(shape, generator=g) * 2 - 1, torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]
    data = load_dataset("cifar10", n_train=n * batch, n_test=1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (data.x_train - mean) / std
    return [(x[i * batch:(i + 1) * batch], data.y_train[i * batch:(i + 1) * batch]) for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=1, help="training batches to time")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (the recipe: 128)")
    parser.add_argument("--T1", type=int, default=T1, help="free-phase steps (the recipe: 250)")
    parser.add_argument("--T2", type=int, default=T2, help="steps of each nudged phase (the recipe: 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--random", action="store_true", help="uniform random inputs instead of CIFAR-10")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    print(f"command: {command}")
    print(f"cpus={os.cpu_count()}, load average (1/5/15 min) at start: {load_avg()}")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, channels={CHANNELS}, T1={args.T1}, "
          f"T2={args.T2}, beta=+/-{BETA} (three phases), batch={args.batch}, "
          f"inputs={'random' if args.random else 'CIFAR-10'}")
    batches = cifar_batches(args.batches, args.batch, args.random, args.seed)
    model = OfficialStyleCNN()
    opt = make_optimizer(model)
    times, correct = [], 0
    for b, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        correct += train_step(model, opt, x, y, args.T1, args.T2)
        times.append(time.perf_counter() - t0)
        print(f"  batch {b + 1}/{len(batches)}: {times[-1]:.2f} s")
    print(f"s/batch: {sum(times) / len(times):.3f} (mean of {len(times)}; min {min(times):.3f}); "
          f"free-phase correct {correct}/{args.batch * len(batches)}")
    print(f"load average (1/5/15 min) at end: {load_avg()}")


if __name__ == "__main__":
    main()
