"""Run configuration: frozen dataclasses loaded from TOML, with ``--set key=value`` overrides.

Every field is type-checked and range-checked when the config is built; a bad value raises
:class:`ConfigError` naming the field (``train.lr``), the value and what is allowed. One
source of truth: the defaults below are the only defaults.

A config file has the sections ``[model]``, ``[ep]``, ``[train]``, ``[data]`` and ``[output]``
plus an optional top-level ``name``; see ``configs/`` for examples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .activations import ACTIVATIONS
from .choices import SOLVERS, UPDATE_MODES
from .estimators import ESTIMATORS, PRECISIONS, RULES
from .network import LOSSES

__all__ = ["ConfigError", "ModelConfig", "EPConfig", "TrainConfig", "DataConfig", "OutputConfig", "HardwareConfig",
           "RunConfig",
           "load_config", "config_from_dict", "apply_overrides", "config_to_dict", "dump_toml"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


MAX_NAME = 200
"""Longest run name: it labels files, tables, plots and SPICE netlist titles."""
MAX_SEED = 2**32 - 1


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _choice(path: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{path} = {value!r} is not allowed; choose one of: {', '.join(sorted(allowed))}")


def _check(path: str, ok: bool, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{path} = {value!r} is invalid: must be {what}")


@dataclass(frozen=True)
class ModelConfig:
    """The layered convergent RNN."""

    layers: tuple[int, ...] = (64, 128, 10)
    """Fully connected layer sizes. Without conv layers ``[n_in, n_1, …, n_classes]`` (the first must
    match the data); with conv layers the sizes after the flattened last conv layer,
    ``[n_1, …, n_classes]`` (``[n_classes]`` for a read-out straight from the last conv layer)."""
    conv_channels: tuple[int, ...] = ()
    """Channels of each conv layer (App. E), each followed by 2x2 max-pooling of stride 2."""
    conv_kernels: tuple[int, ...] = ()
    """Kernel size of each conv layer (one value for all, or one per layer)."""
    conv_padding: tuple[int, ...] = ()
    """Zero-padding of each conv layer (one value for all, or one per layer; default 0)."""
    loss: str = "mse"
    """``"mse"``: output layer in the state, squared error (Eq. 10); ``"xent"``: softmax read-out (Eq. 12–13)."""
    activation: str = "half_hard_sigmoid"
    """σ, see :mod:`neuromorph.activations` (the paper's Eq. 43 by default)."""
    bias: bool = True
    init_scale: float = 1.0
    """Multiplier of PyTorch's default (uniform Kaiming) init bounds."""
    dropout: tuple[float, ...] = ()
    """Dropout probability per state layer (App. F.3; empty: none), masks fixed within an iteration."""
    unidirectional: bool = False
    """Separate backward weights on every synapse but the first, without bias (App. E.4, Eq. 32);
    trained with ``ep.rule = "vf"`` or ``"kp_vf"``."""

    def __post_init__(self):
        _choice("model.loss", self.loss, LOSSES)
        _choice("model.activation", self.activation, ACTIVATIONS)
        need = 1 if self.conv_channels else (2 if self.loss == "mse" else 3)
        _check("model.layers", len(self.layers) >= need and all(n >= 1 for n in self.layers), list(self.layers),
               f"at least {need} positive sizes for loss={self.loss!r}"
               + (" after the conv layers" if self.conv_channels else ""))
        n = len(self.conv_channels)
        _check("model.conv_channels", all(c >= 1 for c in self.conv_channels), list(self.conv_channels),
               "positive channel counts")
        _check("model.conv_kernels", (n == 0 and not self.conv_kernels) or (len(self.conv_kernels) in (1, n)
               and all(k >= 1 for k in self.conv_kernels)), list(self.conv_kernels),
               f"one positive kernel size or one per conv layer ({n})" if n else "empty without conv_channels")
        _check("model.conv_padding", len(self.conv_padding) in ((0, 1, n) if n else (0,))
               and all(p >= 0 for p in self.conv_padding), list(self.conv_padding),
               f"empty, one value or one per conv layer ({n}), each >= 0" if n else "empty without conv_channels")
        _check("model.init_scale", math.isfinite(self.init_scale) and self.init_scale >= 0, self.init_scale,
               "a finite number >= 0")
        _check("model.dropout", all(0 <= p < 1 for p in self.dropout), list(self.dropout),
               "probabilities in [0, 1), one per state layer")

    def conv_layers(self) -> list[tuple[int, int, int]]:
        """``[(channels, kernel, padding), …]`` with single values broadcast to every layer."""
        n = len(self.conv_channels)
        kern = self.conv_kernels * n if len(self.conv_kernels) == 1 else self.conv_kernels
        pad = (self.conv_padding or (0,)) * n if len(self.conv_padding) <= 1 else self.conv_padding
        return [(c, k, p) for c, k, p in zip(self.conv_channels, kern, pad)]


@dataclass(frozen=True)
class EPConfig:
    """Equilibrium Propagation phases and estimator (Eq. 3/5, Algorithm 1)."""

    estimator: str = "symmetric"
    beta: float = 0.5
    T: int = 30
    """Free-phase steps (also the BPTT horizon)."""
    K: int = 10
    """Nudged-phase steps."""
    convergence_tol: float = 1e-3
    """A sample whose last free step moved a unit by more than this is counted as not converged."""
    rule: str = "ep"
    """Learning rule: ``"ep"`` (Eq. 24–29, bidirectional networks), ``"vf"`` (Eq. 33/34) or ``"kp_vf"``
    (Kolen-Pollack VF, Eq. 35–37) for unidirectional networks. Table 1's VF rows use the symmetric estimator."""
    steady_tol: float = 0.0
    """The ideal engine's steady-state stop: a phase (free, nudged, evaluation) ends after the first step at which
    every sample's residual ``max_k ‖s_t − s_{t−1}‖_∞`` is at most this; ``T`` and ``K`` are then maxima. 0 (the
    paper's recipes): exactly ``T`` and ``K`` steps. (The hardware's is ``hardware.settle_tol``.)"""

    def __post_init__(self):
        _choice("ep.estimator", self.estimator, ESTIMATORS)
        _choice("ep.rule", self.rule, RULES)
        _check("ep.beta", math.isfinite(self.beta) and self.beta > 0, self.beta, "a finite number > 0")
        _check("ep.T", self.T >= 1, self.T, "an integer >= 1")
        _check("ep.K", self.K >= 1, self.K, "an integer >= 1")
        _check("ep.convergence_tol", self.convergence_tol > 0, self.convergence_tol, "> 0")
        _check("ep.steady_tol", math.isfinite(self.steady_tol) and self.steady_tol >= 0, self.steady_tol,
               "a finite number >= 0 (0: fixed steps)")


ALGORITHMS = ("ep", "bptt")
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64")
AFTER_DECAY = ("continue", "hold")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (Table 2 for the paper's CIFAR-10 values)."""

    algorithm: str = "ep"
    """``"ep"`` or ``"bptt"`` (backpropagation through the whole free phase)."""
    epochs: int = 10
    batch_size: int = 50
    optimizer: str = "sgd"
    lr: tuple[float, ...] = (0.1,)
    """Learning rate per synapse layer (then the read-out), or one value for all."""
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_epochs: int = 0
    """Cosine annealing decay time in epochs (0: constant learning rate)."""
    lr_final: float = 0.0
    """Learning rate reached after ``decay_epochs``."""
    after_decay: str = "hold"
    """Past ``decay_epochs``: ``"hold"`` ``lr_final`` (the paper's code stops stepping its scheduler at
    ``T_max``) or ``"continue"`` the cosine (torch's CosineAnnealingLR stepped past ``T_max``)."""
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_batch_size: int = 1000
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    progress: bool = True
    precision: str = "highest"
    """Arithmetic of the EP relaxations: ``"highest"`` (the network's dtype), ``"tf32"`` (CUDA TF32
    matmuls/convolutions) or ``"bfloat16"`` (bfloat16 weight copies); the estimate's differences and
    the weight updates stay in ``dtype`` either way."""

    def __post_init__(self):
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.algorithm", self.algorithm, ALGORITHMS)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.after_decay", self.after_decay, AFTER_DECAY)
        _check("train.epochs", self.epochs >= 1, self.epochs, "an integer >= 1")
        _check("train.batch_size", self.batch_size >= 1, self.batch_size, "an integer >= 1")
        _check("train.eval_batch_size", self.eval_batch_size >= 1, self.eval_batch_size, "an integer >= 1")
        _check("train.lr", len(self.lr) >= 1 and all(math.isfinite(v) and v >= 0 for v in self.lr), list(self.lr),
               "a non-empty list of finite numbers >= 0")
        _check("train.momentum", 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        _check("train.weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               self.weight_decay, "a finite number >= 0")
        _check("train.decay_epochs", self.decay_epochs >= 0, self.decay_epochs, "an integer >= 0")
        _check("train.lr_final", math.isfinite(self.lr_final) and self.lr_final >= 0, self.lr_final, ">= 0")
        _check("train.threads", self.threads >= 0, self.threads, "an integer >= 0")
        _check("train.seed", 0 <= self.seed <= MAX_SEED, self.seed, f"an integer in [0, {MAX_SEED}]")
        _check("train.device", self.device == "cpu" or self.device.startswith("cuda"), self.device,
               '"cpu" or "cuda[:N]"')


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """``"digits"`` (scikit-learn, embedded), ``"mnist"`` or ``"cifar10"``."""
    dir: str = ""
    """Data directory; empty: ``$NEUROMORPH_DATA``, then ``../shared/data``."""
    n_train: int = 0
    """Use only the first n training examples (0: all)."""
    n_test: int = 0
    verify: bool = True
    """Check the md5 sums of the files against the published ones."""
    normalize: bool = False
    """Per-channel normalisation with the training set's mean and std (images)."""
    augment: bool = False
    """Random crop with zero padding ``crop_padding`` and random horizontal flip (App. F.1), per batch."""
    crop_padding: int = 4

    def __post_init__(self):
        _choice("data.name", self.name, ("digits", "mnist", "cifar10"))
        _check("data.crop_padding", self.crop_padding >= 0, self.crop_padding, "an integer >= 0")
        _check("data.n_train", self.n_train >= 0, self.n_train, "an integer >= 0")
        _check("data.n_test", self.n_test >= 0, self.n_test, "an integer >= 0")
        _check("data.dir", not _has_control(self.dir), self.dir, "a path without control characters")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/default"
    """Run directory: metrics.jsonl, checkpoint.pt (and checkpoint_best.pt), config.toml, plots."""
    checkpoint: bool = True

    def __post_init__(self):
        _check("output.dir", bool(self.dir) and not _has_control(self.dir), self.dir,
               "a non-empty path without control characters (newline, tab, ...)")



@dataclass(frozen=True)
class HardwareConfig:
    """The simulated hardware of ``neuromorph compare`` (:mod:`neuromorph.hardware`). Units in the names."""

    device: str = "ideal"
    """Device card: a preset name (``neuromorph device list``) or a path to a card TOML."""
    g0_siemens: float = 0.0
    """Weight scale g0 [S] of ``W = (G+ − G−)/g0`` (0: from ``w_max``)."""
    w_max: float | str = "auto"
    """Weight held by a pair with one device at g_max and the other at g_min: ``g0 = (g_max − g_min)/w_max``
    (used when ``g0_siemens`` is 0). Smaller ``w_max`` spends the device's states on a smaller weight range.
    ``"auto"``: per array, ``w_max_auto_factor`` (4) times the largest initial weight of its layer
    (:func:`neuromorph.hil.auto_weight_ranges`; docs/results.md has the measurement behind it)."""
    w_max_auto_factor: float = 4.0
    """With ``w_max = "auto"``: each array's weight range as a multiple of its layer's largest initial weight (the
    mapping lever of a search: larger spends fewer states per weight but keeps weights nearer the middle of the
    devices' range, where nonlinear cards step most evenly)."""
    mapping: str = "min"
    """Weights → conductance pairs: ``"min"`` (one device at g_min) or ``"symmetric"`` (around the midpoint)."""
    policy: str = "bidirectional"
    """Which device of a pair a pulse goes to: ``"bidirectional"`` or ``"unidirectional"`` (potentiation only)."""
    tile_rows: int = 256
    tile_cols: int = 256
    capacitance_farad: float = 1e-12
    """Node capacitance C [F]; ``τ = C/g0``."""
    dac_bits: int = 0
    """Input DAC resolution (0: ideal)."""
    v_read_volt: float = 0.2
    adc_bits: int = 0
    """Per-tile output ADC resolution (0: ideal); needs ``adc_range``."""
    adc_range: float = 0.0
    """ADC full scale ± in weight units (0: no clipping)."""
    read_noise: bool = True
    """Use the card's read noise (and drift at ``read_time_s``) in every read."""
    r_row_ohm: float = 0.0
    r_col_ohm: float = 0.0
    """Line resistance per segment [Ω] (IR drop solved by nodal analysis; 0: none)."""
    read_time_s: float = 0.0
    """Device age [s] at which reads see drift (0: no drift)."""
    reread_input: bool = False
    """Read the input array at every solver evaluation (fresh read noise) instead of once per phase."""
    activity_bits: int = 0
    """ADC resolution of the neuron activities read for the local update (0: exact)."""
    technology: str = "default"
    """Technology card of the cost model (energy, latency, area; :mod:`neuromorph.cost`): a name of
    ``device_models/technology/`` or a path to a card TOML."""
    update: str = "stochastic_rounding"
    """Update requests → pulses: ``stochastic_rounding``, ``deterministic``, ``manhattan``, ``pulse_train`` or
    ``mixed_precision`` (a digital accumulator per weight, a pulse when it passes the device's step)."""
    tt_transfer_every: int = 1
    """Tiki-Taka / TTv2: training samples between two column transfers from the fast array (aihwkit
    ``transfer_every`` in its default unit, samples: a batch of 50 transfers 50 columns)."""
    tt_transfer_lr: float = 1.0
    """Tiki-Taka / TTv2: the read fast-array column times this is the weight array's request (aihwkit
    ``transfer_lr``)."""
    tt_fast_lr: float = 16.0
    """Tiki-Taka / TTv2: the fast array's requests are this times SGD's (aihwkit ``fast_lr`` with
    ``scale_fast_lr = True``), and the transfer is divided by it (aihwkit ``correct_gradient_magnitudes = True``),
    so the weight array's expected change stays SGD's; > 1 spends more of the fast array's states on the requests.
    The default 16 was tuned on MNIST (the README's "Tiki-Taka tuned"); aihwkit's class default is 1."""
    tt_reset_fast: bool = True
    """Tiki-Taka: program a transferred column of the fast array back to 0 (then the weight array plus the fast
    array over ``tt_fast_lr`` is SGD's weight, exactly on an ideal device): aihwkit's ``with_reset_prob = 1``.
    aihwkit's default (``with_reset_prob = 0``) keeps it (``false`` here),
    counting on the fast device's drift toward its symmetry point to damp it; with these cards, kept, TTv2 lost
    40-55 points on MNIST (the README's "Tiki-Taka tuned")."""
    manhattan_threshold: float = 0.0
    """Manhattan updates: fire one pulse where ``|ΔW|`` exceeds this (weight units)."""
    refresh_threshold: float = 0.0
    """Refresh a pair when a device is within this fraction of its range from a bound (0: never)."""
    solver: str = "euler"
    """Settling: ``euler`` / ``heun`` / ``rk4`` (fixed step), ``bosh3`` / ``dopri5`` (adaptive)."""
    dt_tau: float = 1.0
    """Step (fixed) or largest step (adaptive) in units of τ; Euler with 1.0 is the discrete iteration."""
    rtol: float = 1e-4
    atol: float = 1e-6
    settle_tol: float = 0.0
    """Stop a phase when every sample's ``max|z − u|`` is below this (0: run the full ``ep.T``/``ep.K`` · τ)."""
    seed: int = 0
    """Device sampling, read noise and stochastic programming."""

    def transfer(self) -> dict:
        """The ``tt_*`` keys as :class:`~neuromorph.hardware.HardwareNetwork`'s ``transfer`` argument."""
        return {"every": self.tt_transfer_every, "lr": self.tt_transfer_lr, "reset": self.tt_reset_fast,
                "fast_lr": self.tt_fast_lr}

    def __post_init__(self):
        _choice("hardware.mapping", self.mapping, ("min", "symmetric"))
        _check("hardware.seed", 0 <= self.seed <= MAX_SEED, self.seed, f"an integer in [0, {MAX_SEED}]")
        _choice("hardware.policy", self.policy, ("bidirectional", "unidirectional"))
        _choice("hardware.update", self.update, UPDATE_MODES)
        _choice("hardware.solver", self.solver, SOLVERS)
        _check("hardware.tt_transfer_every", self.tt_transfer_every >= 1, self.tt_transfer_every, "an integer >= 1")
        _check("hardware.tt_transfer_lr", math.isfinite(self.tt_transfer_lr) and self.tt_transfer_lr > 0,
               self.tt_transfer_lr, "a finite number > 0")
        _check("hardware.tt_fast_lr", math.isfinite(self.tt_fast_lr) and self.tt_fast_lr > 0, self.tt_fast_lr,
               "a finite number > 0")
        for name in ("tile_rows", "tile_cols"):
            _check(f"hardware.{name}", getattr(self, name) >= 1, getattr(self, name), "an integer >= 1")
        for name in ("dac_bits", "adc_bits", "activity_bits"):
            v = getattr(self, name)
            _check(f"hardware.{name}", v == 0 or 2 <= v <= 32, v, "0 (ideal) or 2..32 bits")
        for name in ("g0_siemens", "adc_range", "r_row_ohm", "r_col_ohm", "read_time_s", "manhattan_threshold",
                     "refresh_threshold", "settle_tol"):
            v = getattr(self, name)
            _check(f"hardware.{name}", math.isfinite(v) and v >= 0, v, "a finite number >= 0")
        for name in ("capacitance_farad", "v_read_volt", "dt_tau", "rtol", "atol"):
            v = getattr(self, name)
            _check(f"hardware.{name}", math.isfinite(v) and v > 0, v, "a finite number > 0")
        w = self.w_max
        _check("hardware.w_max", w == "auto" if isinstance(w, str) else math.isfinite(w) and w > 0, w,
               "\"auto\" or a finite number > 0")
        _check("hardware.w_max_auto_factor", math.isfinite(self.w_max_auto_factor) and self.w_max_auto_factor > 0,
               self.w_max_auto_factor, "a finite number > 0 (multiples of the largest initial weight)")
        _check("hardware.adc_range", not (self.adc_bits and not self.adc_range), self.adc_range,
               "> 0 when hardware.adc_bits is set (the ADC full scale, weight units)")
        _check("hardware.refresh_threshold", self.refresh_threshold < 0.5, self.refresh_threshold, "in [0, 0.5)")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    ep: EPConfig = field(default_factory=EPConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def __post_init__(self):
        _check("name", 1 <= len(self.name) <= MAX_NAME and not _has_control(self.name), self.name,
               f"1 to {MAX_NAME} characters without control characters (newline, tab, ...)")
        if self.model.unidirectional and self.ep.rule == "ep" and self.train.algorithm == "ep":
            raise ConfigError("model.unidirectional = true has no primitive Φ for ep.rule = \"ep\"; "
                              "set ep.rule = \"vf\" or \"kp_vf\"")
        if not self.model.unidirectional and self.ep.rule != "ep":
            raise ConfigError(f"ep.rule = {self.ep.rule!r} trains separate backward weights; "
                              "set model.unidirectional = true, or ep.rule = \"ep\"")


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, tuple[X, ...])."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a list of {inner.__name__}")
        return tuple(_coerce(f"{path}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r} is invalid: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r} is invalid: must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a string")
        return value
    if typing.get_args(tp) == (float, str):  # a number or a keyword (hardware.w_max = "auto")
        if isinstance(value, str):
            return value
        return _coerce(path, value, float)
    raise TypeError(f"unsupported annotation {tp} at {path}")  # a programming error, not user input


@functools.cache
def _fields(cls) -> tuple[dict, dict]:
    """Type hints and fields of a config dataclass (cached: resolving hints dominates building a config)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}")
    hints, fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path)
        else:
            kwargs[name] = _coerce(path, value, tp)
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested dicts (missing keys take the defaults)."""
    return _build(RunConfig, data, "")


def _parse_value(item: str, text: str) -> Any:
    if _has_control(text.replace("\t", " ")):
        raise ConfigError(f"override {item!r}: the value holds a newline or another control character; "
                          "give one TOML value on one line")
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.name=mnist
    if set(doc) != {"v"}:
        raise ConfigError(f"override {item!r}: the value must be one TOML value")
    return doc["v"]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as TOML, bare words as strings)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_value(item, text.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a TOML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory; give a .toml file (see configs/)")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}): a config is a TOML "
                              "text file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    return config_from_dict(apply_overrides(data, overrides or []))


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists): for checkpoints, metrics and TOML output."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(u) for u in v]
        if isinstance(v, dict):
            return {k: conv(u) for k, u in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's (\\uXXXX for control characters)
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(u) for u in v) + "]"
    raise TypeError(type(v))


def dump_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML text (round-trips through :func:`load_config`)."""
    d = config_to_dict(cfg)
    lines = [f"name = {_toml_value(d.pop('name'))}"]
    for section, values in d.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"

