"""Hardware-in-the-loop training and its comparison with the ideal reference (``neuromorph compare``).

:class:`HardwareSubstrate` is the hardware substrate of the one :class:`~neuromorph.train.Trainer`:
:func:`HardwareTrainer` trains the :class:`~neuromorph.hardware.HardwareNetwork` of a config with the same training
loop as the ideal reference of the same config, on exactly what it sees: the same initial weights (the
reference's initialisation, mapped onto conductances; the representable fraction is reported), the same data
order, augmentation, dropout masks and random signs (the same per-epoch generator streams), the same
learning-rate schedule. Its phases settle as circuits on the arrays and its updates are programming pulses; it is
evaluated on the hardware, with its noise. Dense and convolutional networks, dropout (the masks gate the neurons
in every phase) and the unidirectional KP-VF nets run on hardware. The optimizer is the one the config names: plain
SGD programs the EP request directly; SGD with momentum and Adam keep their per-weight state in the digital
periphery (:class:`~neuromorph.policies.PeripheryOptimizer`) and program the change they compute.

Per epoch it records, besides accuracies and losses: pulses, refreshes, reads and energy spent in the epoch's
training (evaluation excluded), the fraction of saturated devices, mean settling time (in τ) and solver steps per
phase, and the fraction of samples whose free phase did not settle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from .config import RunConfig
from .cost import ActivityMeter, Workload, estimate, load_technology, snapshot
from .crossbar import Periphery
from .data import Dataset, iterate_batches
from .devices import DeviceCard, load_card
from .estimators import _rows, make_estimator
from .hardware import HardwareNetwork, make_solver
from .policies import OPTIMIZER_STATE_WORDS, PeripheryOptimizer, periphery_optimizer_kind
from .runio import RunLock, json_safe
from .train import CheckpointError, Trainer

__all__ = ["HardwareTrainer", "HardwareSubstrate", "hardware_from_config", "periphery_from_config", "compare",
           "hardware_from_checkpoint", "perturb_one_ulp"]


def periphery_from_config(cfg: RunConfig) -> Periphery:
    h = cfg.hardware
    return Periphery(dac_bits=h.dac_bits or None, v_read=h.v_read_volt, adc_bits=h.adc_bits or None,
                     adc_range=h.adc_range or None, adc_unit="w", r_row=h.r_row_ohm, r_col=h.r_col_ohm,
                     read_noise=h.read_noise)


W_MAX_AUTO = 4.0
"""``hardware.w_max = "auto"``: each array's weight range is this multiple of its layer's largest initial weight."""


def auto_weight_ranges(net, factor: float = W_MAX_AUTO) -> dict[str, float]:
    """``hardware.w_max = "auto"``: per array (``w1``, ``w2``, …, ``w_out``; a backward array shares its layer's),
    ``factor`` (``hardware.w_max_auto_factor``, default ``W_MAX_AUTO``) times the largest initial weight or bias
    of the layer (forward and backward weights).

    Why: a pair spends its device's states evenly over ``[−w_max, w_max]``, and the default ``w_max = 1`` puts
    most of them where no weight will ever be (PyTorch's init bound is ``1/√fan_in``: 0.036 for MNIST's first
    layer, so at ``w_max = 1`` its weights use ~4 % of the range and a device with ~1,500 nominal steps has a few
    dozen of them left). EP's trained weights grow to a few times their initial bound; 4x keeps them
    representable while spending the states on them. Measured in docs/results.md (MNIST 784-512-10 on ReRAM ES:
    gap +57 points at ``w_max = 1``, +0.7 at 0.25, about the 4x rule's 0.14–0.18)."""
    per, ro, back = net._split(None)
    out = {}
    for k in range(len(net.synapses)):
        m = max(float(p.detach().abs().max()) for p in per[k])
        if back[k] is not None:
            m = max(m, float(back[k].detach().abs().max()))
        out[f"w{k + 1}"] = factor * m
    if ro is not None:
        out["w_out"] = factor * float(ro.detach().abs().max())
    for name, w in out.items():
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"hardware.w_max = \"auto\": the initial weights of {name} are all 0 or not finite; "
                             "set hardware.w_max to a number")
    return out


def hardware_from_config(cfg: RunConfig, net, periphery: Periphery | None = None,
                         card: DeviceCard | None = None) -> HardwareNetwork:
    """The :class:`HardwareNetwork` of ``cfg.hardware`` for ``net`` (its weights mapped onto the arrays);
    ``periphery`` overrides the config's (e.g. :meth:`Periphery.ideal` for a SPICE cross-check), ``card`` its
    ``hardware.device`` (a :class:`DeviceCard` built in Python)."""
    h = cfg.hardware
    card = card if card is not None else load_card(h.device)
    if h.g0_siemens:
        g0 = h.g0_siemens
    elif h.w_max == "auto":
        g0 = {name: card.g_range / w for name, w in auto_weight_ranges(net, h.w_max_auto_factor).items()}
    else:
        g0 = card.g_range / h.w_max
    return HardwareNetwork(net, card, periphery if periphery is not None else periphery_from_config(cfg),
                           tile_size=(h.tile_rows, h.tile_cols), g0=g0,
                           transfer=h.transfer(),
                           mapping=h.mapping, policy=h.policy, capacitance=h.capacitance_farad,
                           activity_bits=h.activity_bits, read_time=h.read_time_s or None,
                           reread_input=h.reread_input, generator=torch.Generator().manual_seed(h.seed))


def periphery_optimizer(cfg: RunConfig, hw: HardwareNetwork) -> PeripheryOptimizer | None:
    """The digital periphery's optimizer of ``cfg.train`` for the arrays of ``hw`` (``None`` for plain SGD)."""
    kind = periphery_optimizer_kind(cfg)
    if kind is None:
        return None
    shapes = {name: tuple(arr.array.shape) for name, arr in hw.arrays().items()}
    return PeripheryOptimizer(shapes, kind, hw.lr_of(cfg.train.lr), momentum=cfg.train.momentum,
                              weight_decay=cfg.train.weight_decay, dtype=hw.net.dtype, device=hw.net.device)


class HardwareSubstrate:
    """The simulated-hardware substrate of a :class:`~neuromorph.train.Trainer` (the ideal one is
    :class:`~neuromorph.train.IdealSubstrate`, with the same interface).

    The trainer's network (the reference's initial weights) is mapped onto the arrays of ``cfg.hardware`` (or of
    ``card``) and becomes the shadow of the programmed weights; per batch the phases settle as circuits on the
    arrays (with the trainer's dropout masks gating the neurons), the local rule of every array is computed from
    the ADC-read steady states and programmed as pulses, and the loss and prediction are read from the hardware.
    Per epoch it reports pulses, refreshes, reads and energy of the training (evaluation excluded), the saturated
    fraction, and the mean settling time (τ) and solver steps per phase. It writes no checkpoint.
    """

    checkpoints = True
    """Its state (every array's devices and counters, the generator, the periphery optimizer) goes into the run's
    checkpoint each epoch: a killed run resumes exactly, and ``neuromorph evaluate`` / ``export-spice`` read it."""

    def __init__(self, trainer: Trainer, card: DeviceCard | None = None, periphery: Periphery | None = None) -> None:
        cfg = trainer.cfg
        if cfg.train.algorithm != "ep":
            raise ValueError(f"train.algorithm = {cfg.train.algorithm!r}: the hardware trains with EP (local "
                             "updates); BPTT has no hardware counterpart here")
        if cfg.ep.rule == "vf" and cfg.model.conv_channels:
            raise ValueError("ep.rule = \"vf\" on convolutional synapses is not simulated on hardware; use "
                             "ep.rule = \"kp_vf\"")
        self.trainer, self.cfg = trainer, cfg
        h = cfg.hardware
        self.hw = hardware_from_config(cfg, trainer.net, periphery=periphery, card=card)
        self.net = self.hw.net
        self.label = f"hardware {self.hw.card.name}"
        # Euler at dt = τ is the plain iteration (HardwareNetwork.settle_phase's fast path when solver is None)
        euler_tau = h.solver == "euler" and h.dt_tau == 1.0
        self.solver = None if euler_tau else make_solver(h.solver, h.dt_tau, self.hw.tau, h.rtol, h.atol)
        self.estimator = make_estimator(cfg.ep.estimator, cfg.ep.beta)
        self.technology = load_technology(h.technology)
        self.optimizer = periphery_optimizer(cfg, self.hw)
        if self.optimizer is not None and h.update == "pulse_train":
            raise ValueError(f"train.optimizer = {cfg.train.optimizer!r} with momentum {cfg.train.momentum}: the "
                             "optimizer runs in the digital periphery and programs its weight change per device, "
                             "which hardware.update = \"pulse_train\" cannot do (it fires the EP rows as pulse "
                             "trains); use stochastic_rounding, deterministic or manhattan, or plain SGD "
                             "(train.optimizer = \"sgd\", train.momentum = 0)")

    # ------------------------------------------------------------------ phases
    def _free(self, x: torch.Tensor, masks: list | None = None):
        h, ec = self.cfg.hardware, self.cfg.ep
        return self.hw.settle_phase(x, None, ec.T, solver=self.solver, tol=h.settle_tol or None, masks=masks)

    def _converged(self, res) -> torch.Tensor:
        """Per sample: settled (steady-state stop) or, for fixed-length phases, residual below the tolerance."""
        if self.cfg.hardware.settle_tol:
            return res.settle.converged
        return res.settle.residual <= self.cfg.ep.convergence_tol

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Accuracy, loss and non-converged fraction of the free phase settled on the hardware (with its noise). The
        generator's state before it is kept (``eval_generator`` in the checkpoint): ``neuromorph evaluate`` of the
        checkpoint draws the same read noise and reports the same accuracy."""
        self.eval_generator = self.hw.generator.get_state()
        correct, loss, bad = 0, 0.0, 0
        for xb, yb in iterate_batches(x, y, self.cfg.train.eval_batch_size, shuffle=False):
            res = self._free(xb)
            logits = self.hw.logits(res.state)
            correct += int((logits.argmax(-1) == yb).sum())
            loss += float(self._loss(logits, res.state, yb).sum())
            bad += int((~self._converged(res)).sum())
        n = x.shape[0]
        return {"acc": correct / n, "loss": loss / n, "nonconverged": bad / n}

    def _loss(self, logits, state, y):
        yo = self.net.one_hot(y)
        if self.net.readout is None:
            return 0.5 * ((state[-1].reshape(len(y), -1) - yo) ** 2).sum(-1)
        return -(yo * torch.log_softmax(logits, -1)).sum(-1)

    # ------------------------------------------------------------------ training
    def begin_epoch(self, lrs: list[float]) -> None:
        self.lrs = lrs
        if self.optimizer is not None:
            self.optimizer.set_lrs(self.hw.lr_of(lrs))
        self.before = self.hw.stats()
        self.before_digital = self.optimizer.stats() if self.optimizer is not None else None
        self.settle_t, self.steps, self.phases = 0.0, 0, 0
        self.cost_before = snapshot(self.hw)
        self.optimizer_updates0 = self.optimizer.n_updates if self.optimizer is not None else 0
        self.work = Workload(optimizer=self.optimizer.kind if self.optimizer is not None else None)
        self.activity = ActivityMeter()

    @torch.no_grad()
    def step(self, xb: torch.Tensor, yb: torch.Tensor, masks, sign_gen: torch.Generator, where: str):
        hw, net = self.hw, self.net
        tc, ec, h = self.cfg.train, self.cfg.ep, self.cfg.hardware
        B = xb.shape[0]
        free = self._free(xb, masks)
        plan = self.estimator.plan(sign_gen)
        J = len(plan.betas)
        xJ = xb.repeat(J, *([1] * (xb.dim() - 1)))
        u0 = [u.repeat(J, *([1] * (u.dim() - 1))) for u in free.u]
        masksJ = None if masks is None else [None if m is None else m.repeat(J, *([1] * (m.dim() - 1)))
                                             for m in masks]
        nudged = hw.settle_phase(xJ, u0, ec.K, y=yb.repeat(J), beta=_rows(plan.betas, B, free.state[0]),
                                 solver=self.solver, tol=h.settle_tol or None, after=free, masks=masksJ)
        free_s = net.masked(free.state, masks)
        rows = hw.outer_products(xb, yb, free_s, net.masked(nudged.state, masksJ), plan, ec.rule)
        hw.apply_update(rows, B, self.lrs, mode=h.update, leakage=tc.weight_decay, threshold=h.manhattan_threshold,
                        refresh_threshold=h.refresh_threshold,
                        shared=hw.shared_arrays(ec.rule),
                        optimizer=self.optimizer)
        logits = hw.logits(free_s)
        batch_loss = self._loss(logits, free_s, yb).sum()
        self.trainer.check_loss(batch_loss, where)
        for r in (free.settle, nudged.settle):
            self.settle_t += float(r.t) / hw.tau
            self.steps += r.n_steps
            self.phases += 1
        w = self.work  # the cost model's workload (neuromorph.cost)
        w.samples += B
        w.node_steps += B * free.settle.n_steps + J * B * nudged.settle.n_steps
        w.phase_rows += B + J * B
        self.activity.add(xb, free.state)
        return logits, batch_loss, (~self._converged(free)).sum()

    def end_epoch(self) -> dict:
        before, after = self.before, self.hw.stats()
        digital = {}
        if self.optimizer is not None:
            d = self.optimizer.stats()
            digital = {"digital_state_words": d["state_words"],
                       "digital_weight_updates": d["weight_updates"] - self.before_digital["weight_updates"]}
        if self.hw.fast_arrays:
            digital["fast_array_devices"] = sum(2 * a.array.numel for a in self.hw.fast_arrays.values())
        if self.hw.accumulators:  # mixed precision / TTv2: one accumulator per device pair
            digital["digital_state_words"] = digital.get("digital_state_words", 0) + sum(
                a.numel() for a in self.hw.accumulators.values())
        w = self.work
        if self.optimizer is not None:
            w.optimizer_updates = self.optimizer.n_updates - self.optimizer_updates0
        cost = estimate(self.hw, self.cost_before, snapshot(self.hw), w, self.technology, self.activity.means())
        c = cost.to_dict()
        digital.update({"cost_energy_J": cost.total_energy, "cost_energy_per_sample_J": c["energy_per_sample_J"],
                        "cost_energy_by_term_J": c["energy_per_sample_by_term_J"],
                        "cost_latency_per_sample_s": c["latency_per_sample_s"], "cost_area_m2": c["area_m2"],
                        "cost_gpu_energy_per_sample_J": c["gpu_energy_per_sample_J"]})
        self.last_cost = cost
        return {**digital, "pulses": after["pulses"] - before["pulses"],
                "pulses_per_device": (after["pulses"] - before["pulses"]) / after["devices"],
                "refreshes": after["refreshes"] - before["refreshes"],
                "reads": after["reads"] - before["reads"], "energy_J": after["energy_J"] - before["energy_J"],
                "saturated_fraction": after["saturated_fraction"],
                "settling_time_tau": self.settle_t / max(self.phases, 1),
                "solver_steps": self.steps / max(self.phases, 1)}

    def state_dict(self) -> dict:
        opt = self.optimizer
        return {"hardware": self.hw.state_dict(), "periphery_optimizer": None if opt is None else opt.state_dict(),
                "eval_generator": getattr(self, "eval_generator", None)}

    def load_state_dict(self, ck: dict, where: str) -> None:
        if "hardware" not in ck:
            raise CheckpointError(f"{where} holds no hardware state: it was written by an ideal-reference run")
        try:
            self.hw.load_state_dict(ck["hardware"], where)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(ck["periphery_optimizer"])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{where}: its hardware state does not fit this run ({type(e).__name__}: {e})") \
                from None

    def describe(self, out: Path) -> None:
        """``mapping.json``: the representable fraction of the initial weights per array, g0 and the weight range
        ``w_max = (g_max − g_min)/g0`` per array, τ, the arrays."""
        hw = self.hw
        (out / "mapping.json").write_text(json.dumps(
            {"representable_fraction": hw.representable, "g0_S": hw.g0, "g0_S_per_array": hw.g0s,
             "w_max_per_array": {k: hw.card.g_range / g for k, g in hw.g0s.items()}, "tau_s": hw.tau,
             "device": self.hw.card.name, "arrays": {k: repr(a) for k, a in self.hw.arrays().items()}}, indent=1))

    def epoch_line(self, m: dict) -> str:
        return (f"[{self.cfg.name} on {self.hw.card.name}] epoch {m['epoch']:>3}/{self.cfg.train.epochs}  train acc "
                f"{m['train_acc']:.4f}  test acc {m['test_acc']:.4f}  pulses {m['pulses']:.3g}  "
                f"energy {_energy_text(self.hw.card, m['energy_J'], '.3g')}  {m['train_time_s']:.1f}s")


def HardwareTrainer(cfg: RunConfig, dataset: Dataset | None = None, out: str | Path | None = None,
                    card: DeviceCard | None = None, overwrite: bool = True, resume: bool = False) -> Trainer:
    """A :class:`~neuromorph.train.Trainer` of ``cfg`` on the simulated hardware (:class:`HardwareSubstrate`):
    the same training loop, data order, initial weights, dropout masks, random signs and schedule as the ideal
    reference of ``cfg``. ``out`` overrides ``cfg.output.dir``; ``card`` (a :class:`DeviceCard` built in Python)
    ``cfg.hardware.device``. Each epoch's checkpoint holds the device state (:meth:`HardwareSubstrate.state_dict`):
    ``resume`` continues a killed run exactly; otherwise a run found in ``out`` is replaced (``overwrite``, the
    default). ``.hw`` is the :class:`HardwareNetwork`."""
    if out is not None:
        cfg = replace(cfg, output=replace(cfg.output, dir=str(out)))
    tr = Trainer(cfg, dataset=dataset, resume=resume, overwrite=overwrite and not resume,
                 substrate=partial(HardwareSubstrate, card=card))
    tr.hw = tr.sub.hw
    return tr


def compare(cfg: RunConfig, out: str | Path, log=print, card: DeviceCard | None = None, resume: bool = False,
            seeds: int = 1) -> dict:
    """Train the ideal reference and the hardware model of ``cfg`` side by side; write the table and the plot.

    Returns the summary (also ``out/comparison.json`` and ``out/comparison.md``; curves in
    ``out/learning_curves.png``; each run's metrics and checkpoints under ``out/ideal`` and ``out/hardware``).
    ``card``: a :class:`DeviceCard` built in Python instead of ``cfg.hardware.device``. ``resume``: continue the
    runs from their checkpoints (a killed comparison ends as an uninterrupted one would).

    ``seeds`` > 1: seeds ``train.seed + k`` (initial weights, data order, random signs) and ``hardware.seed + k``
    (the devices' sample, read noise, stochastic programming) for ``k = 0 … seeds − 1``, each with the reference,
    the hardware and a *control*: the reference again with every initial weight moved by one rounding step of its
    dtype (:func:`perturb_one_ulp`), whose gap to the reference
    is the spread EP training gives two runs that differ by nothing that matters (the trajectories of these
    chaotic dynamics part from any 1e-7 difference). The table gives mean ± standard deviation over the seeds of
    each accuracy, of the gap and of the control's gap, and says whether the gap is *within the seed spread*:
    ``|mean gap − mean control gap| ≤ 2·SE`` (the standard error of that difference over the seeds). Runs go to
    ``out/seed<k>/{ideal,hardware,control}``.
    """
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1):
        raise ValueError(f"seeds = {seeds!r}: an integer >= 1 is required")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, f"comparison directory {str(out)!r}"):
        if seeds == 1:
            return _compare(cfg, out, log, card, resume)
        return _compare_seeds(cfg, out, log, card, resume, seeds)


def perturb_one_ulp(net, seed: int = 123) -> None:
    """Move every weight of ``net`` by one rounding step of its dtype (relative ``eps``), with a random sign: the
    control run of a multi-seed comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.param_list():
            sign = 2 * torch.randint(0, 2, p.shape, generator=g) - 1
            p.mul_(1 + torch.finfo(p.dtype).eps * sign.to(p.dtype))


def _has_energy(card: DeviceCard) -> bool:
    """Whether the card gives an energy per write pulse or per read (otherwise every energy is an unknown 0)."""
    return card.pulse_energy > 0 or card.energy_per_read > 0


def _energy_text(card: DeviceCard, joules: float, fmt: str = ".4g") -> str:
    """``"1.2e-05 J"``, or ``"n/a"`` with the reason when the card gives no pulse or read energy."""
    if not _has_energy(card):
        return f"n/a ({card.name} gives no write-pulse or read energy)"
    return f"{joules:{fmt}} J"


def _notes(cfg: RunConfig) -> list[str]:
    kind = periphery_optimizer_kind(cfg)
    if kind is None:
        return []
    return [f"the hardware runs {kind} in the digital periphery ({OPTIMIZER_STATE_WORDS[kind]} stored number(s) "
            "per weight)"]


def _compare_seeds(cfg: RunConfig, out: Path, log, card: DeviceCard | None, resume: bool, seeds: int) -> dict:
    import statistics

    from .plots import plot_learning_curves

    rows, curves = [], {}
    for k in range(seeds):
        seed = cfg.train.seed + k
        scfg = replace(cfg, train=replace(cfg.train, seed=seed), hardware=replace(cfg.hardware,
                                                                                 seed=cfg.hardware.seed + k))
        d = out / f"seed{seed}"
        hwt = HardwareTrainer(scfg, out=d / "hardware", card=card, resume=resume)
        ideal = Trainer(replace(scfg, output=replace(scfg.output, dir=str(d / "ideal"))), dataset=hwt.dataset,
                        overwrite=not resume, resume=resume)
        ctl = Trainer(replace(scfg, output=replace(scfg.output, dir=str(d / "control"))), dataset=hwt.dataset,
                      overwrite=not resume, resume=resume)
        if ctl.start_epoch == 0:
            perturb_one_ulp(ctl.net)
        hist = {"ideal": ideal.fit(log=log), "hardware": hwt.fit(log=log), "control": ctl.fit(log=log)}
        acc = {name: h[-1]["test_acc"] for name, h in hist.items()}
        rows.append({"seed": seed, "ideal_test_acc": acc["ideal"], "hardware_test_acc": acc["hardware"],
                     "control_test_acc": acc["control"], "gap": acc["ideal"] - acc["hardware"],
                     "control_gap": acc["ideal"] - acc["control"],
                     "pulses": sum(h["pulses"] for h in hist["hardware"]),
                     "energy_J": sum(h["energy_J"] for h in hist["hardware"])})
        for name, h in hist.items():
            curves[f"{name} (seed {seed})"] = h

    def stat(key: str) -> tuple[float, float]:
        v = [r[key] for r in rows]
        return statistics.fmean(v), statistics.stdev(v)

    summary = {"config": cfg.name, "device": hwt.hw.card.name, "epochs": cfg.train.epochs,
               "seeds": [r["seed"] for r in rows], "per_seed": rows, "notes": _notes(cfg),
               "energy_available": _has_energy(hwt.hw.card)}
    for key in ("ideal_test_acc", "hardware_test_acc", "control_test_acc", "gap", "control_gap", "pulses",
                "energy_J"):
        summary[key], summary[f"{key}_std"] = stat(key)
    diff = [r["gap"] - r["control_gap"] for r in rows]
    se = statistics.stdev(diff) / len(diff) ** 0.5
    summary["gap_minus_control"], summary["gap_minus_control_se"] = statistics.fmean(diff), se
    summary["gap_within_seed_spread"] = abs(statistics.fmean(diff)) <= 2 * se
    (out / "comparison.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))

    def pm(key: str, scale: float = 100.0, fmt: str = ".2f") -> str:
        return f"{scale * summary[key]:{fmt}} ± {scale * summary[key + '_std']:{fmt}}"

    verdict = ("within the seed spread (|gap − control gap| ≤ 2 SE)" if summary["gap_within_seed_spread"] else
               "outside the seed spread (|gap − control gap| > 2 SE)")
    md = [f"# {cfg.name}: ideal reference vs hardware ({hwt.hw.card.name}), {seeds} seeds", "",
          "| | mean ± std over seeds |", "|---|---|",
          f"| reference test accuracy (%) | {pm('ideal_test_acc')} |",
          f"| hardware test accuracy (%) | {pm('hardware_test_acc')} |",
          f"| control test accuracy (%): reference, init moved by one ulp | {pm('control_test_acc')} |",
          f"| gap: reference − hardware (points) | {pm('gap')} |",
          f"| control gap: reference − control (points) | {pm('control_gap')} |",
          f"| gap − control gap (points) | {100 * summary['gap_minus_control']:+.2f} ± "
          f"{100 * se:.2f} (SE): {verdict} |",
          f"| programming pulses | {pm('pulses', 1.0, '.4g')} |",
          f"| energy (pulses + reads) (J) | "
          f"{pm('energy_J', 1.0, '.4g') if _has_energy(hwt.hw.card) else _energy_text(hwt.hw.card, 0.0)} |", "",
          "| seed | reference | hardware | control | gap | control gap |", "|---|---|---|---|---|---|",
          *[f"| {r['seed']} | {100 * r['ideal_test_acc']:.2f} | {100 * r['hardware_test_acc']:.2f} | "
            f"{100 * r['control_test_acc']:.2f} | {100 * r['gap']:+.2f} | {100 * r['control_gap']:+.2f} |"
            for r in rows], "", *[f"Note: {n}." for n in summary["notes"]]]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    plot_learning_curves(curves, out / "learning_curves.png", title=f"{cfg.name}: ideal vs {hwt.hw.card.name}")
    if log:
        log("\n".join(md))
    return summary


def _compare(cfg: RunConfig, out: Path, log, card: DeviceCard | None, resume: bool = False) -> dict:
    from .plots import plot_learning_curves

    notes = _notes(cfg)
    # the hardware side is built first: a device name, card or network it cannot simulate is refused before
    # any training (its set-up loads the data and maps the initial weights; the reference reuses the data)
    hwt = HardwareTrainer(cfg, out=out / "hardware", card=card, resume=resume)
    ideal_cfg = replace(cfg, output=replace(cfg.output, dir=str(out / "ideal")))
    # compare replaces its own earlier results, unless resuming them
    ideal = Trainer(ideal_cfg, dataset=hwt.dataset, overwrite=not resume, resume=resume)
    t0 = time.perf_counter()  # timed from here: loading the data is not training
    hist_i = ideal.fit(log=log)
    t_ideal = time.perf_counter() - t0
    t0 = time.perf_counter()
    hist_h = hwt.fit(log=log)
    t_hw = time.perf_counter() - t0
    last_i, last_h = hist_i[-1], hist_h[-1]
    summary = {
        "config": cfg.name, "device": hwt.hw.card.name, "epochs": cfg.train.epochs,
        "ideal_test_acc": last_i["test_acc"], "hardware_test_acc": last_h["test_acc"],
        "gap": last_i["test_acc"] - last_h["test_acc"],
        "ideal_best_test_acc": max(h["test_acc"] for h in hist_i),
        "hardware_best_test_acc": max(h["test_acc"] for h in hist_h),
        "pulses": sum(h["pulses"] for h in hist_h), "refreshes": sum(h["refreshes"] for h in hist_h),
        "energy_J": sum(h["energy_J"] for h in hist_h), "energy_available": _has_energy(hwt.hw.card),
        "saturated_fraction": last_h["saturated_fraction"],
        "settling_time_tau": sum(h["settling_time_tau"] for h in hist_h) / len(hist_h),
        "hardware_nonconverged": last_h["test_nonconverged"],
        "representable_fraction": hwt.hw.representable, "tau_s": hwt.hw.tau,
        "ideal_time_s": t_ideal, "hardware_time_s": t_hw, "notes": notes,
        "cost": hwt.sub.last_cost.to_dict() if getattr(hwt.sub, "last_cost", None) is not None else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))
    rows = [("test accuracy (last epoch)", f"{summary['ideal_test_acc']:.4f}", f"{summary['hardware_test_acc']:.4f}"),
            ("best test accuracy", f"{summary['ideal_best_test_acc']:.4f}",
             f"{summary['hardware_best_test_acc']:.4f}"),
            ("gap (ideal − hardware)", "", f"{summary['gap']:+.4f}"),
            ("programming pulses", "", f"{summary['pulses']:.4g}"),
            ("refreshes", "", f"{summary['refreshes']}"),
            ("energy (pulses + reads)", "", _energy_text(hwt.hw.card, summary["energy_J"])),
            ("saturated devices (end)", "", f"{100 * summary['saturated_fraction']:.2f} %"),
            ("mean settling time per phase", "", f"{summary['settling_time_tau']:.1f} τ (τ = {hwt.hw.tau:.3g} s)"),
            ("free phase not settled (test)", f"{100 * last_i['test_nonconverged']:.2f} %",
             f"{100 * summary['hardware_nonconverged']:.2f} %"),
            ("wall-clock training time", f"{t_ideal:.1f} s", f"{t_hw:.1f} s")]
    cost = summary["cost"]
    if cost is not None:  # the cost model of the last epoch (neuromorph.cost)
        rows[5:6] = [rows[5], ("energy per training sample (cost model, last epoch)",
                               f"{cost['gpu_energy_per_sample_J']:.3g} J on a GPU (estimate)",
                               f"{cost['energy_per_sample_J']:.3g} J (largest: {cost['largest_term']})"),
                     ("latency per training sample (cost model)", "", f"{cost['latency_per_sample_s']:.3g} s"),
                     ("chip area (cost model)", "", f"{cost['area_m2'] * 1e6:.3g} mm²")]
    rep = ", ".join(f"{k} {100 * v:.1f} %" for k, v in hwt.hw.representable.items())
    md = [f"# {cfg.name}: ideal reference vs hardware ({hwt.hw.card.name})", "",
          "| | ideal | hardware |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
          f"Initial weights representable on the device range: {rep}.", *[f"Note: {n}." for n in notes]]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    plot_learning_curves({"ideal": hist_i, f"hardware ({hwt.hw.card.name})": hist_h}, out / "learning_curves.png",
                         title=f"{cfg.name}: ideal vs {hwt.hw.card.name}")
    if log:
        log("\n".join(md))
    return summary


def hardware_from_checkpoint(ck: dict, cfg: RunConfig | None = None, dataset: Dataset | None = None,
                             periphery: Periphery | None = None) -> Trainer:
    """A hardware :class:`~neuromorph.train.Trainer` holding a hardware run's checkpoint (read by
    :func:`~neuromorph.train.load_checkpoint`): its arrays in the saved state (trained conductances, counters,
    generator), ready to evaluate (``.sub.evaluate``) or export. ``cfg``: the run's config (default the
    checkpoint's); ``periphery`` overrides the config's (e.g. :meth:`Periphery.ideal` for a SPICE cross-check).
    Nothing is written."""
    from .config import config_from_dict
    from .train import load_model_state

    where = f"checkpoint {ck.get('_path', '')!r}"
    if "hardware" not in ck:
        raise CheckpointError(f"{where} holds no hardware state: it was written by an ideal-reference run")
    cfg = cfg if cfg is not None else config_from_dict(ck["config"])
    cfg = replace(cfg, output=replace(cfg.output, checkpoint=False))
    tr = Trainer(cfg, dataset=dataset, overwrite=True, substrate=partial(HardwareSubstrate, periphery=periphery))
    load_model_state(tr.net, ck["model"], where)
    tr.sub.load_state_dict(ck, where)
    tr.hw = tr.sub.hw
    return tr
