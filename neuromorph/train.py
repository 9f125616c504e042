"""Training loop: EP or BPTT, optimizers, cosine schedule, metrics, atomic checkpoints, resume.

One epoch = one pass over the (shuffled) training set in mini-batches. The shuffling order and
the random signs of :class:`~neuromorph.estimators.RandomSign` come from generators seeded by
``(seed, epoch)``, so a run resumed from its checkpoint continues exactly as if it had never
stopped. Metrics go to ``metrics.jsonl`` (one JSON object per epoch); the checkpoint
``checkpoint.pt`` is written to a temporary file and renamed, so a kill never leaves a torn file,
and it is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .bptt import bptt_gradients
from .config import RunConfig, config_from_dict, config_to_dict, dump_toml
from .data import Dataset, channel_stats, iterate_batches, load_dataset, normalize, random_crop_flip
from .dynamics import relax
from .estimators import ep_gradients, make_estimator
from .network import LayeredNetwork

__all__ = ["TrainingDiverged", "CheckpointError", "Trainer", "build_network", "make_optimizer", "learning_rate",
           "evaluate", "load_checkpoint", "save_checkpoint", "network_from_checkpoint"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """Non-finite states or gradients during training."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


def learning_rate(epoch: int, lr0: float, lr_final: float, decay_epochs: int, after_decay: str = "hold") -> float:
    """Cosine annealing (Loshchilov & Hutter), closed form of torch's ``CosineAnnealingLR``.

    ``lr(e) = lr_final + (lr0 − lr_final)(1 + cos(π e / decay_epochs)) / 2`` for epoch ``e``
    (0-based). Table 2 decays over 100 epochs inside 120 of training. The paper's code builds
    ``CosineAnnealingLR(optimizer, 100, eta_min=1e-5)`` and steps it only while
    ``epoch < T_max``, so the last 20 epochs run at ``lr_final``: ``after_decay="hold"`` (default).
    ``"continue"`` follows the cosine past the decay time, as torch's scheduler does when it is
    stepped beyond ``T_max`` (the rate rises again). ``decay_epochs = 0``: constant.
    """
    if decay_epochs <= 0:
        return lr0
    if after_decay == "hold" and epoch >= decay_epochs:
        return lr_final
    return lr_final + (lr0 - lr_final) * (1 + math.cos(math.pi * epoch / decay_epochs)) / 2


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def build_network(cfg: RunConfig, n_features: int, n_classes: int,
                  input_shape: tuple[int, ...] | None = None) -> LayeredNetwork:
    """The network of ``cfg.model``, checked against the data it will see."""
    layers = list(cfg.model.layers)
    conv = cfg.model.conv_layers()
    if conv and (input_shape is None or len(input_shape) != 3):
        raise ValueError(f"model.conv_channels needs image data (C, H, W); the data has shape {input_shape}")
    if not conv and layers[0] != n_features:
        raise ValueError(f"model.layers[0] = {layers[0]} but the data has {n_features} input features")
    if layers[-1] != n_classes:
        raise ValueError(f"model.layers[-1] = {layers[-1]} but the data has {n_classes} classes")
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device = {device!r} but CUDA is not available on this machine; use \"cpu\"")
    return LayeredNetwork(layers, loss=cfg.model.loss, activation=cfg.model.activation, bias=cfg.model.bias,
                          init_scale=cfg.model.init_scale, seed=cfg.train.seed, dtype=_dtype(cfg.train.dtype),
                          device=device, input_shape=input_shape if conv else None, conv=conv,
                          dropout=cfg.model.dropout, unidirectional=cfg.model.unidirectional)


def make_optimizer(net: LayeredNetwork, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, one parameter group per synapse layer (then the read-out)."""
    tc = cfg.train
    n = len(net.groups)
    lrs = list(tc.lr)
    if len(lrs) == 1:
        lrs = lrs * n
    if len(lrs) != n:
        raise ValueError(f"train.lr has {len(lrs)} values but the network has {n} layers of weights "
                         f"({len(net.synapses)} synapse layers{' + read-out' if net.readout is not None else ''}); "
                         "give one value or one per layer")
    groups = [{"params": g, "lr": lr, "lr0": lr} for g, lr in zip(net.groups, lrs)]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=tc.momentum, weight_decay=tc.weight_decay,
                            **({"fused": True} if tc.device == "cpu" else {"foreach": True}))
    return torch.optim.Adam(groups, lr=lrs[0], weight_decay=tc.weight_decay,
                            **({"fused": True} if tc.device == "cpu" else {"foreach": True}))


@torch.no_grad()
def evaluate(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, T: int, batch_size: int = 1000,
             tol: float = 1e-3) -> dict:
    """Accuracy and mean loss at the free steady state (T steps), and the fraction not converged."""
    correct, loss, bad = 0, 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        res = relax(net, net.input_drive(xb), net.zero_state(xb.shape[0]), T)
        correct += int((net.predict(res.state) == yb).sum())
        loss += float(net.loss(res.state, yb).sum())
        bad += int((~res.converged(tol)).sum())
    n = x.shape[0]
    return {"acc": correct / n, "loss": loss / n, "nonconverged": bad / n}


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: temporary file in the same directory, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != 1:
        raise CheckpointError(f"{str(path)!r} is not a neuromorph checkpoint (format 1)")
    return ck


def network_from_checkpoint(ck: dict, device: str = "cpu") -> tuple[LayeredNetwork, RunConfig]:
    from dataclasses import replace

    cfg = config_from_dict(ck["config"])
    cfg = replace(cfg, train=replace(cfg.train, device=device))
    shape = tuple(ck.get("input_shape", ()))
    n_features = math.prod(shape) if shape else cfg.model.layers[0]
    net = build_network(cfg, n_features, cfg.model.layers[-1], shape or None)
    net.load_state_dict(ck["model"])
    return net, cfg


@dataclass
class Trainer:
    """Train one configuration; ``fit()`` runs the remaining epochs and returns the history."""

    cfg: RunConfig
    dataset: Dataset | None = None
    resume: bool = False

    def __post_init__(self):
        cfg = self.cfg
        # Set explicitly even for the default: measured 20-40% faster, and steadier, than torch's lazily
        # initialised intra-op pool on this 2-core machine (small products in the relaxation loop).
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
        if self.dataset is None:
            self.dataset = load_dataset(cfg.data.name, cfg.data.dir or None, verify=cfg.data.verify,
                                        n_train=cfg.data.n_train or None, n_test=cfg.data.n_test or None)
        ds = self.dataset
        self.net = build_network(cfg, ds.n_features, ds.n_classes, ds.input_shape)
        dev, dt = self.net.device, self.net.dtype
        self.x_train = ds.x_train.reshape(len(ds.x_train), -1).to(dev, dt)
        self.y_train = ds.y_train.to(dev)
        self.x_test = ds.x_test.reshape(len(ds.x_test), -1).to(dev, dt)
        self.y_test = ds.y_test.to(dev)
        dc = cfg.data
        if (dc.normalize or dc.augment) and len(ds.input_shape) != 3:
            raise ValueError(f"data.normalize / data.augment need image data (C, H, W); {ds.name} has shape "
                             f"{ds.input_shape}")
        self._stats = None
        if dc.normalize:
            self._stats = tuple(t.to(dev, dt) for t in channel_stats(ds.x_train))
            self.x_test = normalize(self.x_test.view(-1, *ds.input_shape), *self._stats).reshape(len(ds.x_test), -1)
        self.optimizer = make_optimizer(self.net, cfg)
        self.estimator = make_estimator(cfg.ep.estimator, cfg.ep.beta)
        self.out = Path(cfg.output.dir)
        self.history: list[dict] = []
        self.start_epoch = 0
        if self.resume:
            self._resume()

    # ------------------------------------------------------------------ persistence
    def _payload(self, epoch: int) -> dict:
        return {"format": 1, "epoch": epoch, "model": self.net.state_dict(),
                "input_shape": list(self.dataset.input_shape), "optimizer": self.optimizer.state_dict(),
                "config": config_to_dict(self.cfg), "history": self.history}

    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return  # nothing to resume: start from scratch
        ck = load_checkpoint(path)
        saved = config_from_dict(ck["config"])
        for section in ("model", "ep", "data"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise CheckpointError(f"cannot resume {str(path)!r}: its [{section}] differs from this config "
                                      f"({getattr(saved, section)} vs {getattr(self.cfg, section)})")
        self.net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.history = list(ck["history"])
        self.start_epoch = int(ck["epoch"]) + 1
        self._write_metrics()

    def _write_metrics(self) -> None:
        tmp = self.out / f".{METRICS}.tmp"
        tmp.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        os.replace(tmp, self.out / METRICS)

    # ------------------------------------------------------------------ training
    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.cfg.train.seed * 1_000_003 + epoch) * 4 + stream)

    def prepare_batch(self, xb: torch.Tensor, aug_gen: torch.Generator) -> torch.Tensor:
        """Augment (random crop and flip, App. F.1) and normalise a training batch, on tensors."""
        dc = self.cfg.data
        if dc.augment or self._stats is not None:
            xb = xb.view(-1, *self.dataset.input_shape)
            if dc.augment:
                xb = random_crop_flip(xb, pad=dc.crop_padding, generator=aug_gen)
            if self._stats is not None:
                xb = normalize(xb, *self._stats)
        return xb

    def train_epoch(self, epoch: int) -> dict:
        cfg, net, opt = self.cfg, self.net, self.optimizer
        tc, ec = cfg.train, cfg.ep
        for g in opt.param_groups:
            g["lr"] = learning_rate(epoch, g["lr0"], tc.lr_final, tc.decay_epochs, tc.after_decay)
        order_gen, sign_gen, aug_gen = self._generator(epoch, 0), self._generator(epoch, 1), self._generator(epoch, 2)
        drop_gen = self._generator(epoch, 3)
        params = net.param_list()
        n = self.x_train.shape[0]
        n_batches = math.ceil(n / tc.batch_size)
        correct = torch.zeros((), dtype=torch.long, device=net.device)
        loss_sum = torch.zeros((), dtype=net.dtype, device=net.device)
        bad = torch.zeros((), dtype=torch.long, device=net.device)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{tc.epochs} [{tc.algorithm}]", leave=False,
                   disable=None if tc.progress else True, mininterval=0.5)  # None: off when not a tty
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(iterate_batches(self.x_train, self.y_train, tc.batch_size, shuffle=True,
                                                     generator=order_gen)):
            xb = self.prepare_batch(xb, aug_gen)
            masks = net.sample_dropout_masks(xb.shape[0], drop_gen)
            if tc.algorithm == "ep":
                res = ep_gradients(net, xb, yb, self.estimator, ec.T, ec.K, generator=sign_gen, masks=masks,
                                   rule=ec.rule, precision=tc.precision)
                grads, state = res.grads, net.masked(res.free.state, masks)
                bad += (~res.free.converged(ec.convergence_tol)).sum()
                with torch.no_grad():
                    batch_loss = net.loss(state, yb).sum()
            else:
                grads, batch_loss, state = bptt_gradients(net, xb, yb, ec.T, masks=masks)
                state = net.masked(state, masks)
                batch_loss = batch_loss * xb.shape[0]
            if not torch.isfinite(batch_loss):
                raise TrainingDiverged(
                    f"non-finite loss at epoch {epoch + 1}, batch {i + 1}/{n_batches} "
                    f"({tc.algorithm}, lr={[g['lr'] for g in opt.param_groups]}, beta={ec.beta}): "
                    "lower the learning rates or beta, or check the data")
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            loss_sum += batch_loss.detach()
            correct += (net.predict(state) == yb).sum()
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(train_acc=f"{int(correct) / min(n, (i + 1) * tc.batch_size):.3f}")
        bar.close()
        train_time = time.perf_counter() - t0
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDiverged(f"non-finite weights after epoch {epoch + 1}: lower the learning rates")
        t1 = time.perf_counter()
        test = evaluate(net, self.x_test, self.y_test, ec.T, tc.eval_batch_size, ec.convergence_tol)
        return {"epoch": epoch + 1, "lr": [g["lr"] for g in opt.param_groups],
                "train_acc": int(correct) / n, "train_loss": float(loss_sum) / n,
                "train_nonconverged": int(bad) / n if tc.algorithm == "ep" else None,
                "test_acc": test["acc"], "test_loss": test["loss"], "test_nonconverged": test["nonconverged"],
                "train_time_s": train_time, "samples_per_s": n / train_time,
                "eval_time_s": time.perf_counter() - t1,
                **({"angles": net.alignment_angles()} if net.unidirectional else {})}

    def fit(self, log=print) -> list[dict]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.toml").write_text(dump_toml(cfg))
        if self.start_epoch == 0:
            self._write_metrics()
        elif log:
            log(f"resuming {cfg.name} at epoch {self.start_epoch + 1}/{cfg.train.epochs} from {self.out / CHECKPOINT}")
        for epoch in range(self.start_epoch, cfg.train.epochs):
            m = self.train_epoch(epoch)
            self.history.append(m)
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(m) + "\n")
            if cfg.output.checkpoint:
                save_checkpoint(self.out / CHECKPOINT, self._payload(epoch))
            if log:
                log(f"[{cfg.name}] epoch {m['epoch']:>3}/{cfg.train.epochs}  train acc {m['train_acc']:.4f}  "
                    f"test acc {m['test_acc']:.4f}  {m['train_time_s']:.1f}s  {m['samples_per_s']:.0f} samples/s")
        return self.history
