"""Non-ideality sweeps (``neuromorph sweep``): hardware-in-the-loop trainings over a grid of parameters, in SQLite.

A sweep file is a run config (the sections of :mod:`neuromorph.config`, inline, and/or ``base = "path.toml"``,
relative to the sweep file) plus the sweep's own keys::

    base = "../hil/mnist_784_512_10_mse.toml"   # optional; inline sections below override it key by key
    seeds = [0, 1]                              # train.seed = hardware.seed = each seed (default [0])
    mode = "grid"                               # "grid" (every combination, default) or "zip" (equal-length
                                                # lists, point i = every axis's value i; values may repeat)

    [train]
    epochs = 3

    [axes]
    "hardware.adc_bits" = [4, 6, 8]             # any config key: section.key
    "device.max_pulses" = [8, 32, 128]          # any parameter of the device card (canonical units, see below)
    "device.c2c_sigma" = [0, 0.02]

    [card]                                      # optional: the device card inline ([card.device], [card.parameters])

Device axes change the card of the point's ``hardware.device`` (or the inline ``[card]``) with
:func:`dataclasses.replace`; their values are in the canonical units of :mod:`neuromorph.devices.units` (S,
fraction of the range, fraction of g_max, levels, s, J, V). Each point is one :class:`~neuromorph.hil.HardwareTrainer`
training per seed; the ideal reference (:class:`~neuromorph.train.Trainer`) runs once per seed and per distinct
non-hardware config (once per seed when only hardware and device parameters are swept).

Everything is validated before any run starts: every point's config is built with the config's own validation and
every point's card with the card's; an unknown key or card parameter, an empty axis, a value of the wrong type, a
parameter that does not apply to the card's model raise :class:`SweepError` naming the axis and the value.

Results: ``OUT/results.sqlite``, table ``runs``, one row per run (``run_id`` = hash of the full resolved config,
the card and the seed, so a changed base config never reuses stale rows), with a column per axis, the parameters
and the config as JSON, status (``pending`` / ``running`` / ``done`` / ``failed`` with the error), final and best
test accuracy, pulses, energy, times and the per-epoch history (JSON). Rows are written by one connection in the
parent (WAL) as each run ends. A restarted sweep skips ``done`` (and ``failed``, unless ``retry_failed``) runs and
redoes the rest (``pending``, and ``running`` rows of a sweep process that was killed). One sweep at a time writes a
table: it holds ``OUT/results.sqlite.lock`` (``flock``, its pid inside), and a second one into the same ``OUT`` stops
at once naming that pid. Execution: serial (``workers=1``), a spawn-context
:class:`~concurrent.futures.ProcessPoolExecutor` (default), or Ray tasks (``ray_address``; ``"local"`` starts a local
instance), one CPU (and one GPU for a CUDA config) per run. Pool workers die with the sweep process (Linux:
``PR_SET_PDEATHSIG``, so also on SIGKILL); on Ctrl-C or SIGTERM the sweep cancels the queued runs, ends its workers
and sets its unfinished rows back to ``pending``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import tomllib
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, apply_overrides, config_from_dict, config_to_dict
from .devices.cards import PARAMETERS, DeviceCard, DeviceCardError, card_from_dict, card_to_toml, load_card
from .policies import periphery_optimizer_kind
from .runio import RunLock, RunLocked, json_safe

__all__ = ["SweepError", "Axis", "RunSpec", "Sweep", "load_sweep", "run_task", "run_sweep", "ResultsDB",
           "read_results", "summary_rows", "format_summary", "add_parsers", "RESULTS"]

RESULTS = "results.sqlite"
SECTIONS = ("model", "ep", "train", "data", "output", "hardware")
SWEEP_KEYS = ("base", "seeds", "mode", "axes", "card")
MODES = ("grid", "zip")
#: a dry run (``load_sweep(expand=False)``) of a sweep of more points checks about this many of them
EXPAND_LIMIT = 1000
#: config keys that are not sweep axes (seeds have their own list; outputs are the sweep's)
NOT_AXES = {"train.seed": "use seeds = [...]", "hardware.seed": "use seeds = [...]",
            "output.dir": "the sweep writes its own outputs", "output.checkpoint": "the sweep writes no checkpoints",
            "train.progress": "the sweep shows no progress bars", "train.threads": "use --threads-per-run"}
#: left out of the run id: they do not change the result
_COSMETIC = (("train", "progress"), ("train", "threads"))


class SweepError(ConfigError):
    """A sweep file is malformed: the message names the file, the key or axis, the value and what is allowed."""


@dataclass(frozen=True)
class Axis:
    key: str
    """``section.key`` of the config or ``device.<card parameter>``."""
    values: tuple

    @property
    def is_device(self) -> bool:
        return self.key.startswith("device.")

    @property
    def is_hardware(self) -> bool:
        """Changes only the hardware (not the ideal reference)."""
        return self.is_device or self.key.startswith("hardware.")


@dataclass(frozen=True)
class RunSpec:
    """One training: ``kind`` "hardware" (a point and a seed) or "ideal" (the reference of a seed)."""

    run_id: str
    kind: str
    seed: int
    point_id: str
    params: dict
    """Axis values of the run (the ideal reference: only its non-hardware axes)."""
    config: dict
    """The resolved config (``config_to_dict``; ``hardware.device`` as written in the sweep)."""
    card: str | None = None
    """The device card as TOML (hardware runs): the worker loads this text, so no path has to exist there."""
    gpu: bool = False

    def task(self, threads: int = 1) -> dict:
        """The picklable payload of :func:`run_task`."""
        return {"run_id": self.run_id, "kind": self.kind, "config": self.config, "card": self.card,
                "threads": threads}


@dataclass
class Sweep:
    name: str
    path: Path | None
    text: str
    axes: list[Axis]
    mode: str
    seeds: tuple[int, ...]
    runs: list[RunSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    point_count: int = 0
    run_count: int = 0
    """The counts (also of a dry run's sweep that was not expanded, whose ``runs`` is empty)."""

    @property
    def n_points(self) -> int:
        return self.point_count or len({r.point_id for r in self.runs if r.kind == "hardware"})

    @property
    def n_runs(self) -> int:
        return self.run_count or len(self.runs)

    def meta(self) -> dict:
        return {"name": self.name, "file": str(self.path) if self.path else None, "text": self.text,
                "mode": self.mode, "seeds": list(self.seeds),
                "axes": [[a.key, list(a.values)] for a in self.axes], "run_ids": [r.run_id for r in self.runs]}


# ---------------------------------------------------------------------- validation
def _where(path: Path | None) -> str:
    return f"sweep {str(path)!r}" if path else "sweep"


def _hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def _merge(base: dict, extra: dict) -> dict:
    """``extra``'s sections over ``base``'s, key by key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _read_toml(p: Path, what: str) -> dict:
    if not p.is_file():
        raise SweepError(f"{what} {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{what} {str(p)!r} is not valid TOML: {e}") from None


def _device_value(where: str, key: str, value: Any, card: DeviceCard) -> Any:
    """Type-check a device axis value for ``card``'s model."""
    param = key.split(".", 1)[1]
    spec = PARAMETERS.get(param)
    if spec is None or "." in param:
        raise SweepError(f"{where}: axis {key!r}: {param!r} is not a device-card parameter; allowed: "
                         f"{', '.join(PARAMETERS)}")
    if card.model not in spec.models:
        raise SweepError(f"{where}: axis {key!r} does not apply to the card {card.name!r} (model {card.model!r}); "
                         f"it applies to the models: {', '.join(spec.models)}")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(f"{where}: axis {key!r} value {value!r} is invalid: must be true or false")
        return value
    if spec.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SweepError(f"{where}: axis {key!r} value {value!r} is invalid: must be an integer count (levels)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{where}: axis {key!r} value {value!r} is invalid: must be a number, in "
                         f"{_unit_text(param)}")
    return float(value)


def _unit_text(param: str) -> str:
    from .devices.units import canonical_unit

    spec = PARAMETERS[param]
    return {"range": "fractions of the conductance range", "g_max": "fractions of g_max", "1": "plain numbers",
            "levels": "levels"}.get(canonical_unit(spec.kind), canonical_unit(spec.kind))


def _check_axes(where: str, axes_data: Any, mode: str) -> list[Axis]:
    if not isinstance(axes_data, dict):
        raise SweepError(f"{where}: [axes] must be a table of \"section.key\" = [values], got {axes_data!r}")
    axes = []
    for key, values in axes_data.items():
        if isinstance(values, dict):
            raise SweepError(f"{where}: axis {key!r} must be a quoted \"section.key\" with a list of values "
                             f"(write \"{key}.{next(iter(values), 'key')}\" = [...])")
        parts = key.split(".")
        if len(parts) != 2 or not all(parts) or parts[0] not in SECTIONS + ("device",):
            raise SweepError(f"{where}: axis {key!r} must be section.key with section one of "
                             f"{', '.join(SECTIONS + ('device',))}")
        if key in NOT_AXES:
            raise SweepError(f"{where}: {key!r} cannot be an axis: {NOT_AXES[key]}")
        if not isinstance(values, list):
            raise SweepError(f"{where}: axis {key!r} = {values!r} must be a list of values")
        if not values:
            raise SweepError(f"{where}: axis {key!r} is empty: give at least one value")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        dup = next((v for v, s in zip(values, seen) if seen.count(s) > 1), None)
        if dup is not None and mode != "zip":  # zip: an axis may repeat a value; its points must differ (below)
            raise SweepError(f"{where}: axis {key!r} repeats the value {dup!r}")
        axes.append(Axis(key, tuple(values)))
    if mode == "zip" and len({len(a.values) for a in axes}) > 1:
        raise SweepError(f"{where}: mode = \"zip\" needs axes of equal length; got "
                         + ", ".join(f"{a.key}: {len(a.values)}" for a in axes))
    if mode == "zip" and axes:
        points = [json.dumps(p, sort_keys=True) for p in zip(*(a.values for a in axes))]
        dup = next((i for i, p in enumerate(points) if points.index(p) != i), None)
        if dup is not None:
            raise SweepError(f"{where}: mode = \"zip\": point {dup + 1} repeats point {points.index(points[dup]) + 1} ("
                             + ", ".join(f"{a.key} = {a.values[dup]!r}" for a in axes) + ")")
    return axes


def _points(axes: list[Axis], mode: str):
    """The sweep's points (``{axis: value}``), lazily."""
    keys = [a.key for a in axes]
    vals = zip(*[a.values for a in axes]) if mode == "zip" else itertools.product(*[a.values for a in axes])
    return (dict(zip(keys, v)) for v in vals) if axes else iter([{}])


def _count_points(axes: list[Axis], mode: str) -> int:
    if not axes:
        return 1
    return len(axes[0].values) if mode == "zip" else math.prod(len(a.values) for a in axes)


def _count_references(axes: list[Axis], mode: str) -> int:
    """Ideal references per seed: the distinct combinations of the non-hardware axes."""
    soft = [a for a in axes if not a.is_hardware]
    if not soft:
        return 1
    if mode == "grid":
        return math.prod(len(a.values) for a in soft)
    return len({tuple(json.dumps(v, sort_keys=True) for v in vals) for vals in zip(*[a.values for a in soft])})


def _sample_points(axes: list[Axis], mode: str, limit: int) -> list[dict]:
    """About ``limit`` points of the sweep, its first and last included: (grid) every value of every axis once,
    the other axes at their first value, and points evenly spread over the whole grid; (zip) evenly spread."""
    def spread(items, k: int) -> list:
        """``k`` (at least 2) of ``items``, evenly spaced, the first and last included."""
        k = max(k, 2)
        return list(items) if len(items) <= k else [items[i * (len(items) - 1) // (k - 1)] for i in range(k)]

    if mode == "zip":
        return [{a.key: a.values[i] for a in axes} for i in spread(range(_count_points(axes, mode)), limit)]

    sizes = [len(a.values) for a in axes]
    per_value = [tuple(j if k == i else 0 for k in range(len(axes))) for i, m in enumerate(sizes) for j in range(m)]
    digits = set(spread(per_value, limit // 2))
    for flat in spread(range(math.prod(sizes)), limit - len(digits)):  # mixed radix: the last axis varies fastest
        d = []
        for m in reversed(sizes):
            flat, r = divmod(flat, m)
            d.append(r)
        digits.add(tuple(reversed(d)))
    return [{a.key: a.values[j] for a, j in zip(axes, d)} for d in sorted(digits)]


def _hash_config(cfg: dict) -> dict:
    d = copy.deepcopy(cfg)
    d.pop("output", None)
    for section, key in _COSMETIC:
        d[section].pop(key, None)
    return d


def load_sweep(path: str | Path | None = None, overrides: list[str] | None = None, *,
               data: dict | None = None, expand: bool = True, progress: bool = False) -> Sweep:
    """Read, validate and expand a sweep file (or the parsed ``data``; relative paths then from the cwd).

    ``overrides`` (``section.key=value``) apply to the base config before the axes. Every run's config and card is
    built here: nothing about a run can be wrong in a way the sweep file could have said.

    ``expand=False`` (a dry run): a sweep of more than :data:`EXPAND_LIMIT` points is counted, not expanded
    (``runs`` stays empty): about that many of its points are checked (in a grid every value of every axis, the
    other axes at their first value, and points spread over the grid). ``progress``: a progress bar on stderr
    while a sweep of more than :data:`EXPAND_LIMIT` points is expanded or checked.
    """
    p = Path(path) if path is not None else None
    where = _where(p)
    if data is None:
        if p is None:
            raise SweepError("load_sweep needs a path or data")
        text = p.read_text() if p.is_file() else ""
        data = _read_toml(p, "sweep file")
    else:
        text = json.dumps(data, sort_keys=True, default=str)
    root = p.parent if p is not None else Path.cwd()
    data = dict(data)
    cfg_data: dict = {}
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise SweepError(f"{where}: base = {base!r} must be the path of a config TOML")
        bp = root / base if (root / base).is_file() or not Path(base).is_file() else Path(base)
        cfg_data = _read_toml(bp, f"{where}: base config")
    seeds = data.pop("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            and s >= 0 for s in seeds)):
        raise SweepError(f"{where}: seeds = {seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: seeds = {seeds!r} repeats a seed")
    mode = data.pop("mode", "grid")
    if mode not in MODES:
        raise SweepError(f"{where}: mode = {mode!r} is not allowed; choose one of: {', '.join(MODES)}")
    axes = _check_axes(where, data.pop("axes", {}), mode)
    card_data = data.pop("card", None)
    cfg_data = _merge(cfg_data, data)
    try:
        cfg_data = apply_overrides(cfg_data, list(overrides or []))
        base_cfg = config_from_dict(cfg_data)
    except ConfigError as e:
        raise SweepError(f"{where}: base config: {e}") from None
    inline_card = None
    if card_data is not None:
        if not isinstance(card_data, dict):
            raise SweepError(f"{where}: [card] must be a device card ([card.device] and [card.parameters])")
        if any(a.key == "hardware.device" for a in axes):
            raise SweepError(f"{where}: an inline [card] and a 'hardware.device' axis exclude each other")
        try:
            inline_card = card_from_dict(card_data, where=f"{where} [card]")
        except DeviceCardError as e:
            raise SweepError(str(e)) from None
        cfg_data.setdefault("hardware", {})["device"] = f"[card] {inline_card.name}"
    if base_cfg.train.algorithm != "ep":
        raise SweepError(f"{where}: train.algorithm = {base_cfg.train.algorithm!r}: hardware-in-the-loop training "
                         "uses EP")
    name = base_cfg.name if "name" in cfg_data else (p.stem if p else "sweep")

    cards: dict[str, DeviceCard] = {}

    def card_of(device: str, ctx: str) -> DeviceCard:
        if inline_card is not None:
            return inline_card
        if device not in cards:
            dp = root / device
            ref = str(dp) if device.endswith(".toml") and dp.is_file() else device
            try:
                cards[device] = load_card(ref)
            except DeviceCardError as e:
                raise SweepError(f"{where}: {ctx}hardware.device = {device!r}: {e}") from None
        return cards[device]

    sweep = Sweep(name=name, path=p, text=text, axes=axes, mode=mode, seeds=tuple(seeds))
    kind = periphery_optimizer_kind(base_cfg)
    if kind is not None:
        sweep.notes.append(f"the hardware runs {kind} in the digital periphery")
    hw_default = config_to_dict(config_from_dict({}))["hardware"]

    def point_runs(point: dict) -> tuple[str, list[RunSpec], list[RunSpec]]:
        """Validate and build a point's runs: ``(context, hardware runs, ideal references)``."""
        ctx = ", ".join(f"{k} = {v!r}" for k, v in point.items())
        pdata = copy.deepcopy(cfg_data)
        dev_params = {}
        for key, value in point.items():
            if key.startswith("device."):
                dev_params[key] = value
                continue
            section, k = key.split(".")
            pdata.setdefault(section, {})[k] = value
        cfgs = []
        for seed in seeds:
            sdata = copy.deepcopy(pdata)
            sdata.setdefault("train", {})["seed"] = seed
            sdata.setdefault("hardware", {})["seed"] = seed
            try:
                cfgs.append(config_to_dict(config_from_dict(sdata)))
            except ConfigError as e:
                raise SweepError(f"{where}: point ({ctx}): {e}") from None
        card = card_of(pdata.get("hardware", {}).get("device", base_cfg.hardware.device), f"point ({ctx}): ")
        if dev_params:
            kw = {k.split(".", 1)[1]: _device_value(where, k, v, card) for k, v in dev_params.items()}
            try:
                card = dataclasses.replace(card, **kw)
            except DeviceCardError as e:
                raise SweepError(f"{where}: point ({ctx}): {str(e).replace('DeviceCard: ', '')}") from None
            prov = tuple((k, v) for k, v in card.provenance if k not in kw)
            card = dataclasses.replace(card, name=f"{card.name} (" + ", ".join(f"{k}={v}" for k, v in kw.items())
                                       + ")", provenance=prov + tuple((k, f"sweep axis device.{k}") for k in kw))
        card_text = card_to_toml(card, only_nondefault=False)
        ref_params = {k: v for k, v in point.items() if not (k.startswith("device.") or k.startswith("hardware."))}
        point_id, ref_point = _hash({"point": point}, 12), _hash({"ideal": ref_params}, 12)
        hw, ref = [], []
        for seed, cfg in zip(seeds, cfgs):
            gpu = cfg["train"]["device"].startswith("cuda")
            rid = _hash({"kind": "hardware", "config": _hash_config(cfg), "card": card_text})
            hw.append(RunSpec(rid, "hardware", seed, point_id, dict(point), cfg, card_text, gpu))
            rcfg = {**copy.deepcopy(cfg), "hardware": copy.deepcopy(hw_default)}
            ref.append(RunSpec(_hash({"kind": "ideal", "config": _hash_config(rcfg)}), "ideal", seed, ref_point,
                               ref_params, rcfg, None, gpu))
        return ctx, hw, ref

    n_points = _count_points(axes, mode)
    if not expand and n_points > EXPAND_LIMIT:
        # a dry run of a large sweep: every axis value (grid) and a spread of points are checked, the runs counted
        sample = _sample_points(axes, mode, EXPAND_LIMIT)
        for point in _progress(sample, progress, "checking sweep points"):
            point_runs(point)
        sweep.point_count = n_points
        sweep.run_count = n_points * len(seeds) + _count_references(axes, mode) * len(seeds)
        every = mode == "grid" and sum(len(a.values) for a in axes) <= EXPAND_LIMIT // 2
        sweep.notes.append(f"{len(sample)} of the {n_points} points checked (" + ("every axis value, " if every else "")
                           + "spread over the sweep); a run checks them all")
        return sweep
    refs: dict[str, RunSpec] = {}
    hw_runs: list[RunSpec] = []
    ids: dict[str, str] = {}
    for point in _progress(_points(axes, mode), progress and n_points > EXPAND_LIMIT, "expanding the sweep",
                           total=n_points):
        ctx, hw, ref = point_runs(point)
        for r in hw:
            if r.run_id in ids:
                raise SweepError(f"{where}: points ({ctx}) and ({ids[r.run_id]}) give the same run (seed {r.seed}); "
                                 "remove the repeated value")
            ids[r.run_id] = ctx
        hw_runs += hw
        for r in ref:
            refs.setdefault(r.run_id, r)
    sweep.runs = list(refs.values()) + hw_runs
    sweep.point_count = n_points
    sweep.run_count = len(sweep.runs)
    return sweep


def _progress(items, show: bool, desc: str, total: int | None = None):
    """``items``, with a progress bar on stderr when ``show``."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=" points", mininterval=1.0, leave=False)


# ---------------------------------------------------------------------- one run (in a worker)
_DATA_CACHE: dict = {}


def _dataset(cfg):
    from .data import load_dataset

    d = cfg.data
    key = (d.name, d.dir, d.verify, d.n_train, d.n_test)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(d.name, d.dir or None, verify=d.verify, n_train=d.n_train or None,
                                        n_test=d.n_test or None)
    return _DATA_CACHE[key]


def run_task(task: dict) -> dict:
    """Train one run of a sweep (in whatever process runs it) and return its record; never raises.

    ``task``: :meth:`RunSpec.task`. torch runs on ``task["threads"]`` threads (restored afterwards), outputs go to
    a temporary directory, and an exception becomes ``status = "failed"`` with its message and traceback.
    """
    import tempfile

    import torch

    prev = torch.get_num_threads()
    threads = task.get("threads", 1)
    started = time.time()
    t0 = time.perf_counter()
    history, status, error = [], "done", None
    try:
        _check_count("--threads-per-run", threads, "torch threads per run")
        torch.set_num_threads(threads)
        from .hil import HardwareTrainer
        from .train import Trainer

        with tempfile.TemporaryDirectory(prefix="neuromorph-sweep-") as tmp:
            data = copy.deepcopy(task["config"])
            data["output"] = {"dir": str(Path(tmp) / "run"), "checkpoint": False}
            data["train"].update(progress=False, threads=threads)
            if task.get("card"):
                card_path = Path(tmp) / "card.toml"
                card_path.write_text(task["card"])
                data["hardware"]["device"] = str(card_path)
            cfg = config_from_dict(data)
            ds = _dataset(cfg)
            if task["kind"] == "hardware":
                history = HardwareTrainer(cfg, dataset=ds).fit(log=None)
            else:
                history = Trainer(cfg, dataset=ds).fit(log=None)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, whatever it raised
        status = "failed"
        error = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-4))
    finally:
        torch.set_num_threads(prev)
    return {"run_id": task["run_id"], "status": status, "error": error, "history": history,
            "wall_s": time.perf_counter() - t0, "started_at": started, "finished_at": time.time(),
            "host": socket.gethostname(), "pid": os.getpid()}


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Pool worker start: die with the sweep process (Linux: ``PR_SET_PDEATHSIG``; SIGKILL, SIGTERM or a crash of
    the parent kills it), leave Ctrl-C to the parent (which stops the pool), run torch on ``threads`` threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl: the parent's shutdown still stops the pool
            pass
    if parent is not None and os.getppid() != parent:  # the parent died before prctl: no signal will come
        os._exit(1)
    import torch

    torch.set_num_threads(threads)


def _check_count(name: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepError(f"{name} {value!r} is invalid: must be an integer >= 1 ({what})")


def _check_run_options(workers: int | None, threads_per_run: int) -> None:
    """Refuse a bad ``--workers`` / ``--threads-per-run`` before anything is written."""
    if workers is not None:
        _check_count("--workers", workers, "processes; 1 runs serially in this process, default: the CPU count")
    _check_count("--threads-per-run", threads_per_run, "torch threads, and Ray CPUs, per run")


@contextlib.contextmanager
def _lock(out: Path):
    """Hold ``out/results.sqlite.lock`` (``flock``, this pid written in it) for one sweep at a time per table; a
    second sweep into the same table stops at once, naming the holder's pid. The lock goes with the process."""
    try:
        lock = RunLock(out, f"{out / RESULTS}", holder="neuromorph sweep", name=RESULTS + ".lock").acquire()
    except RunLocked as e:
        raise SweepError(str(e)) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM raises ``SystemExit(143)`` in the main thread while a sweep runs, so its pool and table are shut
    down as on Ctrl-C (the default action would leave that to the workers' parent-death signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    prev = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the workers now (a run in progress is lost: it stays to be run again)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    pool.shutdown(wait=True)  # the pool's manager thread sees its workers gone and ends


# ---------------------------------------------------------------------- results table
_COLUMNS = """
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, seed INTEGER NOT NULL, point_id TEXT NOT NULL,
    params TEXT NOT NULL, config TEXT NOT NULL, card TEXT,
    status TEXT NOT NULL DEFAULT 'pending', error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    test_acc REAL, best_test_acc REAL, train_acc REAL, test_loss REAL, epochs INTEGER,
    pulses REAL, refreshes REAL, energy_J REAL, energy_per_sample_J REAL, saturated_fraction REAL,
    train_time_s REAL, wall_s REAL,
    submitted_at REAL, started_at REAL, finished_at REAL, host TEXT, pid INTEGER, history TEXT
"""


def _col(key: str) -> str:
    return '"' + key.replace('"', '""') + '"'


def _sql_value(v: Any) -> Any:
    return v if isinstance(v, int | float | str) and not isinstance(v, bool) else json.dumps(v)


class ResultsDB:
    """The sweep's SQLite table; one connection, in the process that schedules the runs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(self.path, timeout=60)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute(f"CREATE TABLE IF NOT EXISTS runs ({_COLUMNS})")
        self.con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.con.execute("CREATE INDEX IF NOT EXISTS runs_status ON runs(status)")
        self.con.execute("CREATE INDEX IF NOT EXISTS runs_kind_seed ON runs(kind, seed)")
        self.con.execute("CREATE INDEX IF NOT EXISTS runs_point ON runs(point_id)")
        self.con.commit()

    def close(self) -> None:
        self.con.close()

    def prepare(self, sweep: Sweep) -> None:
        """Add a column (and an index) per axis, record the sweep, insert its runs that are not there yet."""
        have = {r[1] for r in self.con.execute("PRAGMA table_info(runs)")}
        if "energy_per_sample_J" not in have:  # a table written before the cost model
            self.con.execute("ALTER TABLE runs ADD COLUMN energy_per_sample_J REAL")
        for a in sweep.axes:
            if a.key not in have:
                self.con.execute(f"ALTER TABLE runs ADD COLUMN {_col(a.key)}")
            self.con.execute(f"CREATE INDEX IF NOT EXISTS {_col('axis_' + _hash(a.key, 8))} ON runs({_col(a.key)})")
        self.con.execute("INSERT OR REPLACE INTO meta VALUES ('sweep', ?)", (json.dumps(sweep.meta()),))
        for r in sweep.runs:
            cols = ["run_id", "kind", "seed", "point_id", "params", "config", "card"] + list(r.params)
            vals = [r.run_id, r.kind, r.seed, r.point_id, json.dumps(r.params), json.dumps(r.config), r.card]
            vals += [_sql_value(v) for v in r.params.values()]
            self.con.execute(f"INSERT OR IGNORE INTO runs ({', '.join(map(_col, cols))}) "
                             f"VALUES ({', '.join('?' * len(cols))})", vals)
        self.con.commit()

    def statuses(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT run_id, status FROM runs"))

    def mark_running(self, run_ids: list[str]) -> None:
        now = time.time()
        self.con.executemany("UPDATE runs SET status = 'running', attempts = attempts + 1, submitted_at = ?, "
                             "error = NULL WHERE run_id = ?", [(now, r) for r in run_ids])
        self.con.commit()

    def record(self, res: dict) -> None:
        """Write a finished run (its summary columns and history), committed at once."""
        hist = res.get("history") or []
        last = hist[-1] if hist else {}
        hw = any("pulses" in h for h in hist)

        def total(k):
            return float(sum(h.get(k, 0.0) for h in hist)) if hw else None

        row = {"status": res["status"], "error": res.get("error"),
               "test_acc": last.get("test_acc"), "best_test_acc": max((h["test_acc"] for h in hist), default=None),
               "train_acc": last.get("train_acc"), "test_loss": last.get("test_loss"), "epochs": len(hist),
               "pulses": total("pulses"), "refreshes": total("refreshes"), "energy_J": total("energy_J"),
               "energy_per_sample_J": _mean_cost(hist),
               "saturated_fraction": last.get("saturated_fraction"),
               "train_time_s": float(sum(h.get("train_time_s", 0.0) for h in hist)), "wall_s": res.get("wall_s"),
               "started_at": res.get("started_at"), "finished_at": res.get("finished_at"),
               "host": res.get("host"), "pid": res.get("pid"), "history": json.dumps(json_safe(hist), allow_nan=False)}
        self.con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in row)} WHERE run_id = ?",
                         [*row.values(), res["run_id"]])
        self.con.commit()


def _mean_cost(hist: list[dict]) -> float | None:
    """The cost model's energy per training sample, averaged over the epochs (hardware runs; None otherwise)."""
    vals = [h["cost_energy_per_sample_J"] for h in hist if h.get("cost_energy_per_sample_J") is not None]
    return float(sum(vals) / len(vals)) if vals else None


def read_results(path: str | Path, *, current_only: bool = True) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a results table (read-only); rows as dicts with ``params`` and ``history`` decoded.

    ``current_only``: only the runs of the sweep definition last run into it (a table can hold rows of an
    earlier definition, e.g. before a base config changed).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"results table {str(p)!r} does not exist")
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=60)
    con.row_factory = sqlite3.Row
    try:
        try:
            meta_row = con.execute("SELECT value FROM meta WHERE key = 'sweep'").fetchone()
            rows = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY rowid")]
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{str(p)!r} is not a sweep results table: {e}") from None
    finally:
        con.close()
    meta = json.loads(meta_row[0]) if meta_row else {"axes": [], "run_ids": []}
    if current_only and meta.get("run_ids"):
        keep = set(meta["run_ids"])
        rows = [r for r in rows if r["run_id"] in keep]
    for r in rows:
        r["params"] = json.loads(r["params"])
        r["history"] = json.loads(r["history"]) if r["history"] else []
    return meta, rows


# ---------------------------------------------------------------------- execution
def _failed(spec: RunSpec, e: BaseException) -> dict:
    return {"run_id": spec.run_id, "status": "failed", "error": f"{type(e).__name__}: {e} (the worker did not "
            "return a result)", "history": [], "finished_at": time.time()}


def run_sweep(sweep: Sweep, out: str | Path, *, workers: int | None = None, ray_address: str | None = None,
              threads_per_run: int = 1, retry_failed: bool = False, log=print) -> dict:
    """Run the sweep's missing runs into ``out/results.sqlite``; returns counts ``{"ran", "skipped", "failed"}``.

    ``workers``: 1 runs serially in this process; more (default: the CPU count) a spawn-context process pool;
    ``ray_address``: Ray tasks instead (``"local"``: a local instance with ``workers`` CPUs, or the running one).
    ``workers`` and ``threads_per_run`` (integers >= 1) are checked before anything is written. Raises
    :class:`SweepError` when another sweep process holds the table (``OUT/results.sqlite.lock``). Runs not finished
    when this returns or raises (Ctrl-C, SIGTERM) are left ``pending``: calling it again runs them.
    """
    _check_run_options(workers, threads_per_run)
    if sweep.run_count and not sweep.runs:
        raise ValueError("run_sweep needs the expanded sweep: load_sweep(..., expand=True), not a dry run's")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out), _sigterm_exits():
        db = ResultsDB(out / RESULTS)
        try:
            return _run(sweep, db, workers, ray_address, threads_per_run, retry_failed, log)
        finally:
            # a run this sweep did not finish (Ctrl-C, SIGTERM, an error here) is left to be run again
            with contextlib.suppress(sqlite3.Error):
                db.con.rollback()
                db.con.execute("UPDATE runs SET status = 'pending' WHERE status = 'running'")
                db.con.commit()
            db.close()


def _run(sweep: Sweep, db: ResultsDB, workers: int | None, ray_address: str | None, threads_per_run: int,
         retry_failed: bool, log) -> dict:
    db.prepare(sweep)
    status = db.statuses()
    finished = {"done", "failed"} if not retry_failed else {"done"}
    todo = [r for r in sweep.runs if status.get(r.run_id) not in finished]
    skipped = len(sweep.runs) - len(todo)
    extra = len(status) - len({r.run_id for r in sweep.runs})
    if log:
        log(f"sweep {sweep.name}: {sweep.n_points} points x {len(sweep.seeds)} seeds "
            f"(+ {sum(r.kind == 'ideal' for r in sweep.runs)} ideal references) = {len(sweep.runs)} runs; "
            f"{skipped} finished already, {len(todo)} to run -> {db.path}")
        stale = sum(status.get(r.run_id) == "running" for r in todo)
        if stale:
            log(f"  ({stale} of them were left running by a sweep process that ended: they run again)")
        if extra > 0:
            log(f"  ({extra} rows of an earlier definition of this sweep are kept in the table, not plotted)")
        for n in sweep.notes:
            log(f"  note: {n}")
    counts = {"ran": 0, "skipped": skipped, "failed": 0}
    t0 = time.perf_counter()

    def done(res: dict) -> None:
        db.record(res)
        counts["ran"] += 1
        counts["failed"] += res["status"] == "failed"
        if log:
            spec = by_id[res["run_id"]]
            what = ", ".join(f"{k}={v}" for k, v in spec.params.items()) or "base"
            acc = f"test acc {res['history'][-1]['test_acc']:.4f}" if res["history"] else \
                f"FAILED: {(res.get('error') or '').splitlines()[0]}"
            log(f"  [{counts['ran']}/{len(todo)}] {spec.kind} seed {spec.seed} ({what}): {acc}  "
                f"{res.get('wall_s') or 0:.1f}s")

    by_id = {r.run_id: r for r in todo}
    if todo:  # a finished sweep (nothing left to run) only reports
        if ray_address:
            _run_ray(todo, ray_address, workers, threads_per_run, db, done)
        elif (workers or os.cpu_count() or 1) <= 1:
            for spec in todo:
                db.mark_running([spec.run_id])
                done(run_task(spec.task(threads_per_run)))
        else:
            n = min(workers or os.cpu_count() or 1, len(todo))
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                       initargs=(threads_per_run, os.getpid()))
            try:
                db.mark_running([s.run_id for s in todo])
                futures = {pool.submit(run_task, s.task(threads_per_run)): s for s in todo}
                for fut in as_completed(futures):
                    try:
                        res = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker that died: the run failed
                        res = _failed(futures[fut], e)
                    done(res)
            except BaseException:  # Ctrl-C, SIGTERM, an error here: no worker outlives the sweep
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    counts["wall_s"] = time.perf_counter() - t0
    if log:
        log(f"sweep {sweep.name}: {counts['ran']} runs in {counts['wall_s']:.1f}s ({counts['failed']} failed); "
            f"table {db.path}")
    return counts


def _run_ray(todo: list[RunSpec], address: str, workers: int | None, threads: int, db: ResultsDB, done) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs the ray package: pip install 'neuromorph[ray]'") from None
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(run_task)
        db.mark_running([s.run_id for s in todo])
        refs = {remote.options(num_cpus=threads, num_gpus=1 if s.gpu else 0, max_retries=0)
                .remote(s.task(threads)): s for s in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task whose worker died: the run failed
                    res = _failed(refs[ref], e)
                done(res)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------- summary and CLI
def summary_rows(rows: list[dict], axes: list[str]) -> list[dict]:
    """Per point: mean and std over seeds of the final test accuracy, pulses and energy (done runs)."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['kind']}:{r['point_id']}", []).append(r)
    out = []
    for runs in groups.values():
        ok = [r for r in runs if r["status"] == "done"]
        acc = np.array([r["test_acc"] for r in ok], dtype=float)
        out.append({"kind": runs[0]["kind"], "params": runs[0]["params"], "n": len(ok), "failed":
                    sum(r["status"] == "failed" for r in runs),
                    "acc_mean": float(acc.mean()) if len(acc) else float("nan"),
                    "acc_std": float(acc.std()) if len(acc) else float("nan"),
                    "pulses": float(np.mean([r["pulses"] for r in ok])) if ok and ok[0]["pulses"] is not None
                    else None,
                    "energy_J": float(np.mean([r["energy_J"] for r in ok])) if ok and ok[0]["energy_J"] is not None
                    else None})
    return out


def format_summary(rows: list[dict], axes: list[str]) -> str:
    """The sweep's table as text: one line per point (every parameter named in full), mean ± std over seeds."""
    table = []
    for s in summary_rows(rows, axes):
        what = "ideal reference" if s["kind"] == "ideal" else "hardware"
        if s["params"]:
            what += " " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in s["params"].items())
        acc = f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f}" if s["n"] else "-"
        fail = f" ({s['failed']} failed)" if s["failed"] else ""
        pulses = f"{s['pulses']:.3g}" if s["pulses"] is not None else "-"
        energy = f"{s['energy_J']:.3g}" if s["energy_J"] is not None else "-"
        table.append((what, s["n"], acc, pulses, energy, fail))
    w = max([48] + [len(t[0]) + 1 for t in table])
    lines = [f"{'run':<{w}}{'seeds':>6}{'test acc (mean ± std)':>24}{'pulses':>11}{'energy (J)':>12}"]
    lines += [f"{what:<{w}}{n:>6}{acc:>24}{pulses:>11}{energy:>12}{fail}" for what, n, acc, pulses, energy, fail
              in table]
    return "\n".join(lines)


def _cmd_sweep(args) -> int:
    _check_run_options(args.workers, args.threads_per_run)
    sweep = load_sweep(args.file, list(args.set or []), expand=not args.dry_run, progress=True)
    out = Path(args.out or Path("runs/sweeps") / Path(args.file).stem)
    if args.dry_run:
        print(f"sweep {sweep.name}: {sweep.n_points} points x {len(sweep.seeds)} seeds, {sweep.n_runs} runs "
              f"(valid; nothing run)")
        for n in sweep.notes:
            print(f"  note: {n}")
        return 0
    counts = run_sweep(sweep, out, workers=args.workers, ray_address=args.ray, threads_per_run=args.threads_per_run,
                       retry_failed=args.retry_failed)
    meta, rows = read_results(out / RESULTS)
    print()
    print(format_summary(rows, [a[0] for a in meta["axes"]]))
    print(f"\nfigures: neuromorph plot {out / RESULTS}")
    return 1 if counts["failed"] else 0


def _cmd_plot(args) -> int:
    from .sweep_plots import plot_sweep

    out = Path(args.out) if args.out else Path(args.results).parent / "figures"
    paths = plot_sweep(args.results, out)
    for p in paths:
        print(f"{p}  (and {p.with_suffix('.svg').name})")
    return 0


def add_parsers(sub) -> None:
    """Register ``sweep`` and ``plot`` on the main parser's subparsers."""
    s = sub.add_parser("sweep", help="hardware-in-the-loop trainings over a grid of device/periphery/training "
                       "parameters, results in SQLite", description=__doc__.split("\n\n")[0])
    s.add_argument("file", metavar="FILE.toml", help="sweep file (see configs/sweeps/)")
    s.add_argument("--workers", type=int, default=None,
                   help="processes, >= 1 (default: the CPU count; 1 runs serially in this process)")
    s.add_argument("--ray", metavar="ADDRESS", help="run each run as a Ray task: a cluster address (ray.init's "
                   "address, e.g. auto or ray://host:10001) or 'local' to start a local instance")
    s.add_argument("--threads-per-run", type=int, default=1, help="torch threads (and Ray CPUs) per run, >= 1 "
                   "(default 1)")
    s.add_argument("--out", help="output directory (default runs/sweeps/<file name>); results.sqlite goes there")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config value")
    s.add_argument("--retry-failed", action="store_true", help="run failed runs again (done runs never rerun)")
    s.add_argument("--dry-run", action="store_true", help="validate the sweep file and count the runs only (of a "
                   f"sweep of more than {EXPAND_LIMIT} points: about {EXPAND_LIMIT} points, spread over it and "
                   "covering the axis values, are checked)")
    s.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("plot", help="figures of a sweep's results table (accuracy vs parameters, heatmap, "
                       "learning curves, pulses/energy vs accuracy)")
    p.add_argument("results", metavar="RESULTS.sqlite")
    p.add_argument("--out", help="figure directory (default: figures/ beside the table)")
    p.set_defaults(func=_cmd_plot)
