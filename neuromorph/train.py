"""Training loop: EP or BPTT, optimizers, cosine schedule, metrics, atomic checkpoints, resume.

One epoch = one pass over the (shuffled) training set in mini-batches. The shuffling order and
the random signs of :class:`~neuromorph.estimators.RandomSign` come from generators seeded by
``(seed, epoch)``, so a run resumed from its checkpoint continues exactly as if it had never
stopped. Metrics go to ``metrics.jsonl`` (one JSON object per epoch); the checkpoint
``checkpoint.pt`` is written to a temporary file and renamed, so a kill never leaves a torn file,
and it is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .bptt import bptt_gradients
from .config import RunConfig, config_from_dict, config_to_dict, dump_toml
from .data import Dataset, channel_stats, iterate_batches, load_dataset, normalize, random_crop_flip
from .dynamics import relax
from .estimators import ep_gradients, make_estimator
from .network import LayeredNetwork
from .runio import LOCK, RunLock, atomic_write, json_line

__all__ = ["TrainingDiverged", "CheckpointError", "RunExists", "Trainer", "IdealSubstrate", "build_network",
           "make_optimizer", "learning_rate", "evaluate", "load_checkpoint", "save_checkpoint",
           "network_from_checkpoint", "load_model_state", "find_run", "check_run_dir", "RESUMABLE_KEYS"]

CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
METRICS = "metrics.jsonl"
RESUMES = "resumes.jsonl"
CHANCE_EPOCHS = 3
"""Epochs in a row with the training accuracy at chance (at most 1.5 / classes) and a training loss that did not
fall by 0.1 % over them before the run warns that it has diverged (a slow start still lowers its loss)."""

RESUMABLE_KEYS = frozenset({
    "name", "train.epochs", "train.decay_epochs", "train.eval_batch_size", "train.progress", "train.threads",
    "train.device", "ep.convergence_tol", "data.dir", "data.verify", "output.dir", "output.checkpoint"})
"""Config keys a ``--resume`` may change (applied and recorded in ``resumes.jsonl``); any other difference from
the checkpoint's config is refused. ``train.decay_epochs`` may change only to a value beyond the epochs done."""


class TrainingDiverged(RuntimeError):
    """Non-finite states or gradients during training."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


class RunExists(RuntimeError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


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
    lrs = net.layer_rates(tc.lr)
    groups = [{"params": g, "lr": lr, "lr0": lr} for g, lr in zip(net.groups, lrs)]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=tc.momentum, weight_decay=tc.weight_decay,
                            **({"fused": True} if tc.device == "cpu" else {"foreach": True}))
    return torch.optim.Adam(groups, lr=lrs[0], weight_decay=tc.weight_decay,
                            **({"fused": True} if tc.device == "cpu" else {"foreach": True}))


@torch.no_grad()
def evaluate(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, T: int, batch_size: int = 1000,
             tol: float = 1e-3, steady_tol: float | None = None) -> dict:
    """Accuracy and mean loss at the free steady state (T steps; at most T with the steady-state stop
    ``steady_tol``), and the fraction not converged."""
    correct, loss, bad = 0, 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        res = relax(net, net.input_drive(xb), net.zero_state(xb.shape[0]), T, tol=steady_tol or None)
        correct += int((net.predict(res.state) == yb).sum())
        loss += float(net.loss(res.state, yb).sum())
        bad += int((~res.converged(tol)).sum())
    n = x.shape[0]
    return {"acc": correct / n, "loss": loss / n, "nonconverged": bad / n}


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: temporary file in the same directory, fsync, rename. On failure (a full disk) the
    temporary file is removed, the previous checkpoint is kept and :class:`~neuromorph.runio.WriteFailed` says why."""
    atomic_write(path, lambda f: torch.save(payload, f))


_CHECKPOINT_KEYS = {"format": int, "epoch": int, "model": dict, "config": dict}


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from the file) and check its structure."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; give the checkpoint file "
                              f"(e.g. {str(path / CHECKPOINT)!r})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        # torch's own text can advise weights_only=False, i.e. running code from the file: never pass it on
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}): it is truncated, "
                              "corrupted or not a checkpoint written by neuromorph") from None
    if not isinstance(ck, dict) or ck.get("format") != 1:
        raise CheckpointError(f"{str(path)!r} is not a neuromorph checkpoint (format 1)")
    for key, tp in _CHECKPOINT_KEYS.items():
        if key not in ck:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry; a neuromorph checkpoint holds "
                                  f"{', '.join(_CHECKPOINT_KEYS)}")
        if not isinstance(ck[key], tp) or isinstance(ck[key], bool):
            raise CheckpointError(f"checkpoint {str(path)!r}: {key!r} is a {type(ck[key]).__name__}, "
                                  f"expected a {tp.__name__}")
    bad = [k for k, v in ck["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r}: model entries {bad[:5]} are not named tensors")
    shape = ck.get("input_shape", [])
    if not isinstance(shape, (list, tuple)) or not all(isinstance(v, int) and v >= 1 for v in shape):
        raise CheckpointError(f"checkpoint {str(path)!r}: input_shape = {shape!r} is not a list of positive integers")
    ck["_path"] = str(path)
    return ck


def _some(items: list[str], n: int = 12) -> str:
    """The first ``n`` items joined by commas (and how many more)."""
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _shape_text(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _layer_sizes(shapes: list[tuple[int, ...]]) -> list[int] | None:
    """``[n0, n1, ...]`` of a bidirectional dense network from its parameter shapes ``[(n1, n0), (n1,), (n2, n1),
    ...]`` (biases optional); None when the shapes are no such chain (conv layers, backward weights, ...)."""
    mats = [s for s in shapes if len(s) == 2]
    if not mats or any(len(s) not in (1, 2) for s in shapes):
        return None
    sizes = [mats[0][1]]
    for m in mats:
        if m[1] != sizes[-1]:
            return None
        sizes.append(m[0])
    return sizes


def _describe(shapes: dict) -> str:
    """``layer sizes 64-32-10 (params.0 32x64, params.1 32, ...)`` or just the parameter shapes."""
    items = _some([f"{k} {_shape_text(v)}" for k, v in shapes.items()]) or "no parameters"
    sizes = _layer_sizes(list(shapes.values()))
    return f"layer sizes {'-'.join(map(str, sizes))} ({items})" if sizes else f"parameters ({items})"


def load_model_state(net: LayeredNetwork, state: dict, where: str = "the checkpoint") -> None:
    """Load ``state`` into ``net`` after checking it: the network's parameter names and shapes (a checkpoint of
    another architecture names both networks' layer sizes and the differences), real and finite values.
    Raises :class:`CheckpointError`."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if have != want:
        what = []
        if missing := [k for k in want if k not in have]:
            what.append(f"the checkpoint lacks {_some(missing)}")
        if extra := [str(k) for k in have if k not in want]:
            what.append(f"the checkpoint has extra {_some(extra)}")
        if diff := [f"{k} {_shape_text(have[k])} vs {_shape_text(want[k])}" for k in want
                    if k in have and have[k] != want[k]]:
            what.append(f"shapes (checkpoint vs config) {_some(diff)}")
        same = _layer_sizes(list(have.values())) == _layer_sizes(list(want.values())) is not None
        raise CheckpointError(f"{where} holds another network than this config's: checkpoint {_describe(have)}, "
                              f"config {_describe(want)}; differences: {'; '.join(what)}"
                              + (" (same layer sizes: model.bias or model.unidirectional differ)" if same else "")
                              + ". Use the config the checkpoint was trained with")
    for k, v in state.items():
        if v.is_complex() or v.dtype == torch.bool:
            raise CheckpointError(f"{where}: parameter {k} has dtype {v.dtype}; real numbers are required")
        n_bad = int((~torch.isfinite(v)).sum()) if v.is_floating_point() else 0
        if n_bad:
            raise CheckpointError(f"{where}: parameter {k} ({_shape_text(v.shape)}) has {n_bad} non-finite "
                                  "value(s) (nan/inf); the weights must be finite")
    net.load_state_dict(state)


def network_from_checkpoint(ck: dict, device: str = "cpu") -> tuple[LayeredNetwork, RunConfig]:
    """The network (with the checkpoint's weights) and config of a checkpoint read by :func:`load_checkpoint`."""
    where = f"checkpoint {ck.get('_path', '')!r}"
    try:
        cfg = config_from_dict(ck["config"])
    except ValueError as e:
        raise CheckpointError(f"{where} holds an invalid config: {e}") from None
    cfg = replace(cfg, train=replace(cfg.train, device=device))
    shape = tuple(ck.get("input_shape", ()))
    n_features = math.prod(shape) if shape else cfg.model.layers[0]
    net = build_network(cfg, n_features, cfg.model.layers[-1], shape or None)
    load_model_state(net, ck["model"], where)
    return net, cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _stuck_at_chance(window: list[dict], chance: float) -> bool:
    if len(window) < CHANCE_EPOCHS or any(h["train_acc"] > chance for h in window):
        return False
    first, last = window[0]["train_loss"], window[-1]["train_loss"]
    return not (math.isfinite(first) and math.isfinite(last)) or last >= (1 - 1e-3) * first


def check_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False, probe_lock: bool = True) -> None:
    """Refuse, before any work, an output directory that another process is training in (naming its pid), that
    is a file, or that holds a run when neither ``resume`` nor ``overwrite`` is set."""
    out = Path(out)
    if probe_lock and out.is_dir() and (out / LOCK).is_file():
        RunLock(out).acquire().release()
    found = find_run(out)
    if found and not resume and not overwrite:
        raise RunExists(f"{str(out)!r} already holds a run: {found}. Continue it with --resume, give another --out, "
                        "or replace it with --overwrite")


def find_run(out: Path) -> str | None:
    """What in ``out`` shows a run (a checkpoint, recorded epochs or a config), or None for an empty/new one."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise RunExists(f"output directory {str(out)!r} is a file; give a directory for the run")
    if (out / CHECKPOINT).exists():
        return f"a checkpoint ({out / CHECKPOINT})"
    metrics = out / METRICS
    if metrics.exists() and metrics.stat().st_size > 0:
        return f"recorded epochs ({metrics})"
    if (out / "config.toml").exists():
        return f"a config ({out / 'config.toml'})"
    return None


class IdealSubstrate:
    """The ideal reference substrate of a :class:`Trainer`: exact, autograd-free relaxations
    (:func:`~neuromorph.dynamics.relax`), the EP estimate (:func:`~neuromorph.estimators.ep_gradients`) or BPTT,
    and one ``torch.optim`` step (SGD with momentum or Adam) per batch.

    A substrate is what :class:`Trainer` talks to per batch and per epoch (the hardware one is
    :class:`~neuromorph.hil.HardwareSubstrate`): ``begin_epoch(lrs)``, ``step(xb, yb, masks, sign_gen, where)``
    (the phases and the update of one batch; returns the logits, the summed loss and the count of samples whose
    free phase did not converge), ``end_epoch()`` (the epoch's extra metrics), ``evaluate(x, y)``.
    """

    checkpoints = True
    """Its state (weights and optimizer) goes into the run's checkpoint, so its runs resume."""

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        self.trainer, self.cfg, self.net = trainer, cfg, trainer.net
        self.label = cfg.train.algorithm
        self.optimizer = make_optimizer(self.net, cfg)
        self.estimator = make_estimator(cfg.ep.estimator, cfg.ep.beta)
        self.params = self.net.param_list()

    def begin_epoch(self, lrs: list[float]) -> None:
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self.steps = [0, 0, 0]  # free steps, nudged steps, batches (steady-state stop)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, masks, sign_gen: torch.Generator, where: str):
        net, tc, ec = self.net, self.cfg.train, self.cfg.ep
        if tc.algorithm == "ep":
            res = ep_gradients(net, xb, yb, self.estimator, ec.T, ec.K, generator=sign_gen, masks=masks,
                               rule=ec.rule, precision=tc.precision, tol=ec.steady_tol or None)
            if ec.steady_tol:
                self.steps[0] += res.free.steps
                self.steps[1] += res.nudged.steps
                self.steps[2] += 1
            grads, state = res.grads, net.masked(res.free.state, masks)
            bad = (~res.free.converged(ec.convergence_tol)).sum()
            with torch.no_grad():
                batch_loss = net.loss(state, yb).sum()
        else:
            grads, batch_loss, state = bptt_gradients(net, xb, yb, ec.T, masks=masks)
            state = net.masked(state, masks)
            batch_loss, bad = batch_loss * xb.shape[0], None
        self.trainer.check_loss(batch_loss, where)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        return net.logits(state), batch_loss, bad

    def end_epoch(self) -> dict:
        if not all(torch.isfinite(p).all() for p in self.params):
            raise TrainingDiverged(f"non-finite weights after epoch {self.trainer.epoch + 1}: lower the learning "
                                   "rates")
        free, nudged, n = self.steps
        return {"free_steps": free / n, "nudged_steps": nudged / n} if n else {}

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        ec = self.cfg.ep
        return evaluate(self.net, x, y, ec.T, self.cfg.train.eval_batch_size, ec.convergence_tol,
                        ec.steady_tol or None)

    def describe(self, out: Path) -> None:
        """Files the substrate writes beside the run's config (none for the ideal reference)."""

    def state_dict(self) -> dict:
        """What a checkpoint holds besides the weights: the optimizer's state."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, ck: dict, where: str) -> None:
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{where}: its optimizer state does not fit train.optimizer = "
                                  f"{self.cfg.train.optimizer!r} ({type(e).__name__}: {e})") from None


@dataclass
class Trainer:
    """Train one configuration on a substrate; ``fit()`` runs the remaining epochs and returns the history.

    One training loop for both substrates: the data order, augmentation, dropout masks and random signs come from
    per-epoch generator streams (:meth:`_generator`), the learning rates from the cosine schedule, and the
    substrate (default :class:`IdealSubstrate`; :class:`~neuromorph.hil.HardwareSubstrate` for
    hardware-in-the-loop) runs each batch's phases and update.
    """

    cfg: RunConfig
    dataset: Dataset | None = None
    resume: bool = False
    overwrite: bool = False
    """Replace a run found in ``cfg.output.dir`` (otherwise :class:`RunExists` is raised unless resuming)."""
    substrate: Callable[[Trainer], Any] | None = None
    """Builds the substrate from this trainer (its network, data and config); ``None``: :class:`IdealSubstrate`."""

    def __post_init__(self):
        cfg = self.cfg
        self.out = Path(cfg.output.dir)
        if self.resume:  # before any work: a refused resume costs nothing
            check_run_dir(self.out, resume=True, overwrite=self.overwrite)
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
        self.epoch, self._lrs = 0, list(cfg.train.lr)
        self.sub = (self.substrate or IdealSubstrate)(self)
        self.net = self.sub.net
        if self.resume and not self.sub.checkpoints:
            raise CheckpointError(f"the {self.sub.label} substrate writes no checkpoint: its runs cannot be resumed")
        self.history: list[dict] = []
        self.resumes: list[dict] = []
        self._changed: dict = {}
        self.start_epoch = 0
        if self.resume:
            self._resume()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The ideal substrate's optimizer."""
        return self.sub.optimizer

    @property
    def estimator(self):
        return self.sub.estimator

    # ------------------------------------------------------------------ persistence
    def _payload(self, epoch: int) -> dict:
        return {"format": 1, "epoch": epoch, "model": self.net.state_dict(),
                "input_shape": list(self.dataset.input_shape), **self.sub.state_dict(),
                "config": config_to_dict(self.cfg), "history": self.history, "resumes": self.resumes}

    def _config_changes(self, saved: dict, where: str) -> dict:
        """Keys whose value differs from the checkpoint's config; refuses those a resume may not change."""
        try:  # keys added since the run was written count as their defaults
            saved = config_to_dict(config_from_dict(saved))
        except ValueError as e:
            raise CheckpointError(f"cannot resume {where}: its config is invalid now ({e})") from None
        old, new = _flat(saved), _flat(config_to_dict(self.cfg))
        changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        refused = [k for k in changed if k not in RESUMABLE_KEYS]
        if "train.decay_epochs" in changed and changed["train.decay_epochs"][1] <= self.start_epoch:
            refused.append("train.decay_epochs")
        if refused:
            diffs = "; ".join(f"{k}: {changed[k][0]!r} in the checkpoint, {changed[k][1]!r} now" for k in refused)
            raise CheckpointError(
                f"cannot resume {where}: this config differs from the run's in keys a resume may not change "
                f"({diffs}). Start a new run (another --out) or drop these changes; a resume may change "
                f"{', '.join(sorted(RESUMABLE_KEYS))} (train.decay_epochs only beyond the {self.start_epoch} "
                "epochs done)")
        return changed

    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            metrics = self.out / METRICS
            if metrics.exists() and metrics.stat().st_size > 0:
                raise CheckpointError(f"cannot resume {str(self.out)!r}: it has recorded epochs but no {CHECKPOINT} "
                                      "(output.checkpoint = false?); start again with --overwrite or another --out")
            return  # killed before its first epoch ended: start from scratch
        ck = load_checkpoint(path)
        self.start_epoch = int(ck["epoch"]) + 1
        changed = self._config_changes(ck["config"], repr(str(path)))
        load_model_state(self.net, ck["model"], f"checkpoint {str(path)!r}")
        self.sub.load_state_dict(ck, f"checkpoint {str(path)!r}")
        self.history = list(ck.get("history", []))
        self.resumes = list(ck.get("resumes", []))
        if changed:
            self.resumes.append({"epoch": self.start_epoch, "changed": {k: {"from": a, "to": b}
                                                                          for k, (a, b) in changed.items()}})
        self._changed = changed

    def _write_metrics(self) -> None:
        atomic_write(self.out / METRICS, lambda f: f.write("".join(json_line(h) for h in self.history).encode()))

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

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``"test"`` or ``"train"`` split as the network sees it at evaluation: flat, normalised when the
        config normalises (no augmentation)."""
        if name == "test":
            return self.x_test, self.y_test
        if name != "train":
            raise ValueError(f"split {name!r}: allowed: test, train")
        x = self.x_train
        if self._stats is not None:
            x = normalize(x.view(-1, *self.dataset.input_shape), *self._stats).reshape(len(x), -1)
        return x, self.y_train

    def check_loss(self, batch_loss: torch.Tensor, where: str) -> None:
        """Stop on a non-finite loss, naming the epoch, the batch and the rates."""
        if not torch.isfinite(batch_loss):
            raise TrainingDiverged(f"non-finite loss at {where} ({self.sub.label}, lr={self._lrs}, "
                                   f"beta={self.cfg.ep.beta}): "
                                   "lower the learning rates or beta, or check the data")

    def train_epoch(self, epoch: int, *, max_batches: int | None = None, evaluate: bool = True) -> dict:
        """Train one epoch (its first ``max_batches`` batches when given) and evaluate on the test split (unless
        ``evaluate`` is false: the test entries are then None). Returns the epoch's metrics."""
        cfg, net, sub = self.cfg, self.net, self.sub
        tc = cfg.train
        self.epoch = epoch
        self._lrs = lrs = [learning_rate(epoch, lr, tc.lr_final, tc.decay_epochs, tc.after_decay)
                           for lr in net.layer_rates(tc.lr)]
        order_gen, sign_gen, aug_gen = self._generator(epoch, 0), self._generator(epoch, 1), self._generator(epoch, 2)
        drop_gen = self._generator(epoch, 3)
        sub.begin_epoch(lrs)
        n = self.x_train.shape[0]
        n_batches = math.ceil(n / tc.batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
            n = min(n, n_batches * tc.batch_size)
        correct = torch.zeros((), dtype=torch.long, device=net.device)
        loss_sum = torch.zeros((), dtype=net.dtype, device=net.device)
        bad = torch.zeros((), dtype=torch.long, device=net.device)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{tc.epochs} [{sub.label}]", leave=False,
                   disable=None if tc.progress else True, mininterval=0.5)  # None: off when not a tty
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(iterate_batches(self.x_train, self.y_train, tc.batch_size, shuffle=True,
                                                     generator=order_gen)):
            if i == n_batches:
                break
            xb = self.prepare_batch(xb, aug_gen)
            masks = net.sample_dropout_masks(xb.shape[0], drop_gen)
            logits, batch_loss, n_bad = sub.step(xb, yb, masks, sign_gen, f"epoch {epoch + 1}, batch {i + 1}/"
                                                                          f"{n_batches}")
            loss_sum += batch_loss.detach()
            correct += (logits.argmax(-1) == yb).sum()
            if n_bad is not None:
                bad += n_bad
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(train_acc=f"{int(correct) / min(n, (i + 1) * tc.batch_size):.3f}")
        bar.close()
        train_time = time.perf_counter() - t0
        extras = sub.end_epoch()
        t1 = time.perf_counter()
        test = sub.evaluate(self.x_test, self.y_test) if evaluate else dict.fromkeys(("acc", "loss", "nonconverged"))
        return {"epoch": epoch + 1, "lr": lrs,
                "train_acc": int(correct) / n, "train_loss": float(loss_sum) / n,
                "train_nonconverged": int(bad) / n if tc.algorithm == "ep" else None,
                "test_acc": test["acc"], "test_loss": test["loss"], "test_nonconverged": test["nonconverged"],
                "train_time_s": train_time, "samples_per_s": n / train_time,
                "eval_time_s": time.perf_counter() - t1, **extras,
                **({"angles": net.alignment_angles()} if net.unidirectional else {})}

    def fit(self, log=print) -> list[dict]:
        """Train the remaining epochs, holding the run directory's lock; returns the history.

        Each epoch appends one strict JSON line to ``metrics.jsonl`` and (with ``output.checkpoint``) writes
        ``checkpoint.pt`` atomically; ``checkpoint_best.pt`` keeps the epoch of best test accuracy, so a run
        that diverges late keeps its best weights. A run whose training accuracy stays at chance for
        :data:`CHANCE_EPOCHS` epochs says so once.
        """
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out):
            check_run_dir(self.out, resume=self.resume, overwrite=self.overwrite, probe_lock=False)
            atomic_write(self.out / "config.toml", lambda f: f.write(dump_toml(cfg).encode()))
            self.sub.describe(self.out)
            self._write_metrics()
            if self._changed:
                text = "".join(json_line(r) for r in self.resumes).encode()
                atomic_write(self.out / RESUMES, lambda f: f.write(text))
            if self.start_epoch == 0:
                for stale in (CHECKPOINT, BEST_CHECKPOINT, RESUMES):  # --overwrite: nothing of the old run survives
                    (self.out / stale).unlink(missing_ok=True)
            elif log:
                changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self._changed.items())
                log(f"resuming {cfg.name} at epoch {self.start_epoch + 1}/{cfg.train.epochs} from "
                    f"{self.out / CHECKPOINT}" + (f"; changed: {changes}" if changes else ""))
            best = max((h["test_acc"] for h in self.history if h.get("test_acc") is not None), default=-1.0)
            chance = 1.5 / self.net.n_classes
            warned = False
            for epoch in range(self.start_epoch, cfg.train.epochs):
                m = self.train_epoch(epoch)
                self.history.append(m)
                with open(self.out / METRICS, "a") as f:
                    f.write(json_line(m))
                if cfg.output.checkpoint and self.sub.checkpoints:
                    payload = self._payload(epoch)
                    save_checkpoint(self.out / CHECKPOINT, payload)
                    if math.isfinite(m["test_acc"]) and m["test_acc"] > best:
                        best = m["test_acc"]
                        save_checkpoint(self.out / BEST_CHECKPOINT, payload)
                if log:
                    log(self.sub.epoch_line(m) if hasattr(self.sub, "epoch_line") else
                        f"[{cfg.name}] epoch {m['epoch']:>3}/{cfg.train.epochs}  train acc {m['train_acc']:.4f}  "
                        f"test acc {m['test_acc']:.4f}  {m['train_time_s']:.1f}s  {m['samples_per_s']:.0f} samples/s")
                if not warned and _stuck_at_chance(self.history[-CHANCE_EPOCHS:], chance):
                    warned = True
                    print(f"neuromorph: warning: {cfg.name}: the training accuracy has been at chance "
                          f"(<= {chance:.3f} for {self.net.n_classes} classes) for {CHANCE_EPOCHS} epochs: the run "
                          f"has likely diverged (train.lr = {list(cfg.train.lr)}); its best epoch is kept in "
                          f"{self.out / BEST_CHECKPOINT if cfg.output.checkpoint else 'metrics.jsonl'}",
                          file=sys.stderr, flush=True)
        return self.history
