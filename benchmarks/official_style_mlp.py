"""Same-machine baseline: EP on an MNIST MLP in the style of the official code.

What this is
------------
A small, self-contained re-implementation (our own code, not a copy) of the
*algorithmic style* of the official implementation of Laborieux et al. (2021),
"Scaling Equilibrium Propagation to Deep ConvNets by Drastically Reducing its
Gradient Estimator Bias" (github.com/Laborieux-Axel/Equilibrium-Propagation,
class ``P_MLP`` in ``model_utils.py`` and the ``train`` / ``evaluate`` loop).
It mirrors that implementation's autograd-per-step approach:

* synapses are ``torch.nn.Linear`` layers (PyTorch default init, bias on);
* the primitive function, per sample, is
  ``Phi = sum_n <W_n s_{n-1} + b_n, s_n> - beta * L`` with
  ``L = 0.5 * sum((s_out - onehot(y))**2)`` (only added when beta != 0);
* every relaxation step recomputes Phi and takes
  ``torch.autograd.grad(Phi, neurons)``; each layer (output included, since
  the loss is MSE) is then set to ``sigma(dPhi/ds)``, i.e. the nudge sits
  *inside* the activation;
* phases run sequentially: free phase (beta=0, T=30, from zero state), a
  +beta phase (K=10) continuing from the free fixed point, then a -beta phase
  (K=10) restarted from a copy of the free fixed point ("thirdphase");
* the EP update is autograd of Phi at the two nudged states:
  ``backward((mean Phi(s^-, -beta) - mean Phi(s^+, +beta)) / (2 beta))``
  leaves ``-(dPhi(s^+)/dtheta - dPhi(s^-)/dtheta) / (2 beta)`` in ``.grad``,
  which Adam (lr 5e-4) then minimises;
* prediction is ``argmax`` of the output layer after a free phase of T=30.

Recipe: 784-512-10, sigma(x) = 1 / (1 + exp(-4 (x - 0.5))), MSE, batch 50,
beta = 0.1, T1 = 30, T2 = 10, Adam lr 5e-4 on both layers, test batches of 200.
(The official ``check/train_mnist.sh`` runs this recipe with the one-sided
two-phase estimate, i.e. without ``--thirdphase``; the symmetric three-phase
estimate is used here.)

Why
---
The official code is reported at roughly 1,800 training samples/s and ~96 %
test accuracy after one epoch on a 2-core CPU. Running this script on *our*
machine gives a like-for-like baseline for neuromorph's own simulator, so the
two are compared on the same hardware rather than across papers.

Timing caveat: measure on an otherwise idle machine (the script prints the
load average and the OpenMP wait policy). With 2 threads on a 2-core box,
OpenMP's default spin-waiting plus any other CPU-heavy process makes the many
tiny parallel ops per relaxation step collapse (observed: ~20 instead of
~2,000 samples/s). ``OMP_WAIT_POLICY=PASSIVE`` avoids the collapse under
contention but is ~35 % slower on an idle machine, so it is not the default.

Data are loaded with :func:`neuromorph.data.load_dataset` (MNIST in [0, 1],
the same range as the official ``ToTensor()`` + ``Normalize(0, 1)``).

Usage::

    .venv/bin/python benchmarks/official_style_mlp.py --epochs 1 --threads 2
    .venv/bin/python benchmarks/official_style_mlp.py --n-train 5000   # quick check
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

ARCHI = (784, 512, 10)
T_FREE = 30
T_NUDGE = 10
BETA = 0.1
BATCH = 50
TEST_BATCH = 200
LR = 5e-4


def my_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The official 'mysig' activation: 1 / (1 + exp(-4 (x - 0.5)))."""
    return 1 / (1 + torch.exp(-4 * (x - 0.5)))


class OfficialStyleMLP(torch.nn.Module):
    """Layered Hopfield-like MLP whose dynamics are autograd of Phi."""

    def __init__(self, archi: tuple[int, ...] = ARCHI, activation=my_sigmoid) -> None:
        super().__init__()
        self.archi = archi
        self.activation = activation
        self.n_classes = archi[-1]
        self.synapses = torch.nn.ModuleList(
            torch.nn.Linear(archi[i], archi[i + 1], bias=True) for i in range(len(archi) - 1)
        )

    def phi(self, x: torch.Tensor, y: torch.Tensor, neurons: list[torch.Tensor], beta: float) -> torch.Tensor:
        """Primitive function per sample, shape (B,)."""
        layers = [x.view(x.size(0), -1), *neurons]
        phi = 0.0
        for idx, syn in enumerate(self.synapses):
            phi = phi + torch.sum(syn(layers[idx]) * layers[idx + 1], dim=1)
        if beta != 0.0:
            target = F.one_hot(y, num_classes=self.n_classes).float()
            loss = 0.5 * F.mse_loss(layers[-1], target, reduction="none").sum(dim=1)
            phi = phi - beta * loss
        return phi

    def init_neurons(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, size, requires_grad=True) for size in self.archi[1:]]

    def relax(
        self, x: torch.Tensor, y: torch.Tensor, neurons: list[torch.Tensor], steps: int, beta: float
    ) -> list[torch.Tensor]:
        """Run ``steps`` fixed-point iterations s <- sigma(dPhi/ds) (all layers at once)."""
        ones = torch.ones(x.size(0))
        for _ in range(steps):
            phi = self.phi(x, y, neurons, beta)
            grads = torch.autograd.grad(phi, neurons, grad_outputs=ones)
            neurons = [self.activation(g).requires_grad_() for g in grads]
        return neurons

    def ep_gradients(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        neurons_a: list[torch.Tensor],
        neurons_b: list[torch.Tensor],
        beta_a: float,
        beta_b: float,
    ) -> None:
        """Leave -(dPhi_b/dtheta - dPhi_a/dtheta) / (beta_b - beta_a) (batch mean) in ``.grad``."""
        self.zero_grad()
        phi_a = self.phi(x, y, neurons_a, beta_a).mean()
        phi_b = self.phi(x, y, neurons_b, beta_b).mean()
        ((phi_b - phi_a) / (beta_a - beta_b)).backward()


def detached_copy(neurons: list[torch.Tensor]) -> list[torch.Tensor]:
    return [n.detach().clone().requires_grad_() for n in neurons]


def train_step(model: OfficialStyleMLP, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """One EP iteration (free, +beta, -beta, update); returns #correct in the free phase."""
    neurons = model.relax(x, y, model.init_neurons(x.size(0)), T_FREE, 0.0)
    free = detached_copy(neurons)
    correct = int((neurons[-1].detach().argmax(dim=1) == y).sum())

    plus = detached_copy(model.relax(x, y, neurons, T_NUDGE, BETA))
    minus = detached_copy(model.relax(x, y, detached_copy(free), T_NUDGE, -BETA))
    model.ep_gradients(x, y, plus, minus, BETA, -BETA)
    opt.step()
    return correct


def evaluate(model: OfficialStyleMLP, x_all: torch.Tensor, y_all: torch.Tensor) -> float:
    """Test accuracy after a free phase of T_FREE steps, batches of TEST_BATCH."""
    correct = 0
    for start in range(0, x_all.size(0), TEST_BATCH):
        x, y = x_all[start : start + TEST_BATCH], y_all[start : start + TEST_BATCH]
        neurons = model.relax(x, y, model.init_neurons(x.size(0)), T_FREE, 0.0)
        correct += int((neurons[-1].detach().argmax(dim=1) == y).sum())
    return correct / x_all.size(0)


def load_avg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=None, help="use the first N training examples (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ]
    command = shlex.join([*env, sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    print(f"command: {command}")
    print(f"cpus={os.cpu_count()}, load average (1/5/15 min) at start: {load_avg()}  (other load skews timings)")
    print(
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}"
    )
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, archi={ARCHI}, T1={T_FREE}, "
        f"T2={T_NUDGE}, beta=+/-{BETA} (three phases), batch={BATCH}, Adam lr={LR}"
    )

    data = load_dataset("mnist", n_train=args.n_train)
    x_train, y_train = data.x_train.reshape(data.x_train.size(0), -1), data.y_train
    x_test, y_test = data.x_test.reshape(data.x_test.size(0), -1), data.y_test
    n = x_train.size(0)

    model = OfficialStyleMLP()
    opt = torch.optim.Adam([{"params": syn.parameters(), "lr": LR} for syn in model.synapses])

    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        n_batches = (n + BATCH - 1) // BATCH
        correct = seen = 0
        t0 = time.perf_counter()
        for b in range(n_batches):
            idx = perm[b * BATCH : (b + 1) * BATCH]
            correct += train_step(model, opt, x_train[idx], y_train[idx])
            seen += idx.numel()
            if (b + 1) % max(1, n_batches // 10) == 0 or b == n_batches - 1:
                dt = time.perf_counter() - t0
                print(
                    f"  epoch {epoch + 1} batch {b + 1}/{n_batches}: run train acc {correct / seen:.4f}, "
                    f"{seen / dt:.0f} samples/s"
                )
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        test_acc = evaluate(model, x_test, y_test)
        eval_s = time.perf_counter() - t1
        print(
            f"epoch {epoch + 1}: train {seen} samples in {train_s:.1f} s = {seen / train_s:.0f} samples/s "
            f"(run train acc {correct / seen:.4f}); test acc {test_acc:.4f} "
            f"(eval {x_test.size(0)} samples in {eval_s:.1f} s)"
        )
    print(f"load average (1/5/15 min) at end: {load_avg()}")


if __name__ == "__main__":
    main()
