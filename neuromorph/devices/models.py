r"""Vectorised arrays of memristive devices (torch, CPU or CUDA, float32 or float64, seeded).

:class:`DeviceArray` holds one conductance per device (siemens) and the device-to-device (d2d) parameters sampled
when it is built; :meth:`DeviceArray.apply_pulses` applies signed pulse counts (> 0 potentiation, < 0 depression),
:meth:`DeviceArray.read` returns the conductances as read (drift, read noise, stuck devices).

Models (``card.model``)
-----------------------
All step models work in aihwkit's normalised weight ``w`` per device, mapped to conductance by
``g = g_ref + s w`` with ``s = (g_max - g_min)/(w_max - w_min)`` [S] and ``g_ref = g_min - s w_min`` (w = 0).
A device has bounds ``b_min <= 0 <= b_max`` and steps ``s_up, s_dn > 0`` (aihwkit ``PulsedRPUDevice::populate``)::

    b_max = |w_max (1 + w_max_dtod xi)|,   b_min = -|w_min (1 + w_min_dtod xi)|
    s_up  = |(up_bias + gain + r) dw_min|,  s_dn = |(down_bias + gain - r) dw_min|
    gain = 1 + dw_min_dtod xi,  r = up_down_dtod xi,
    up_bias = min(up_down, 0),  down_bias = -max(up_down, 0)

One pulse (xi a fresh standard normal per pulse and device, sigma = ``dw_min_std``), then clip to [b_min, b_max]:

* ``constant_step`` (aihwkit ConstantStep):   w += s_up (1 + sigma xi)   |   w -= s_dn (1 + sigma xi)
* ``linear_step`` (aihwkit LinearStep):        w += (k_up w + s_up)(1 + sigma xi)  |  w -= (k_dn w + s_dn)(1 + sigma xi)
  with ``mult_noise`` (the default, as in aihwkit); ``mult_noise = false`` (additive noise: the noise multiplies
  only s): w += k_up w + s_up (1 + sigma xi), with ``k_up = -|gamma_up + gamma_up_dtod xi| s_up / w_ref_up``,
  ``k_dn = -|gamma_down + gamma_down_dtod xi| s_dn / w_ref_dn``, ``w_ref`` = w_max / w_min (mean_bound_reference)
  or the device's b_max / b_min.
* ``soft_bounds`` (aihwkit SoftBounds): linear step with gamma = 1 and the device's own bounds,
  i.e. w += s_up (1 - w/b_max), w -= s_dn (1 - w/b_min).
* ``exp_step`` (aihwkit ExpStep): z = 2 a w/(b_max - b_min) + b,
  w += max(1 - A_up e^{gamma_up z}, 0) s_up (1 + sigma xi),
  w -= max(1 - A_down e^{-gamma_down z}, 0) s_dn (1 + sigma xi);
  with ``dw_min_std_add``/``dw_min_std_slope`` > 0 aihwkit's "complex noise":
  w += dw + sigma (|dw| + add + slope |w|) xi.
* write noise (``write_noise_std`` > 0, aihwkit): the update acts on a hidden persistent conductance; what is read
  is ``g_persistent + write_noise_std * dw_min * s * xi`` (floored at 0 S), resampled each time a device is
  updated or set.

``neurosim``: NeuroSim's ``G(P) = B (1 - e^{-P/A}) + G_min`` (see :mod:`neuromorph.devices.neurosim`); a write of n
pulses moves P by n on the LTP (n > 0) or LTD (n < 0) curve, then adds NeuroSim's cycle-to-cycle term
``N(0, c2c_sigma (G_max - G_min)) sqrt(|n|)`` and clips (``RealDevice::Write``). One :meth:`apply_pulses` call is one
NeuroSim write; n single-pulse calls give the per-pulse noise of n independent draws. d2d: the NL labels get
``N(0, nl_dtod)`` (NeuroSim sigmaDtoD), G_min / G_max get relative spreads ``g_min_dtod`` / ``g_max_dtod``.

``ideal``: linear and continuous, a pulse moves g by exactly ``dw_min (g_max - g_min)`` (plus NeuroSim-style
``c2c_sigma`` if set), ``set_conductance`` is exact.

Closed forms are used where they are exact: NeuroSim and ideal always; constant, linear and soft-bounds steps
without cycle-to-cycle noise (the geometric series of the affine step map, then the clip, which equals the
per-pulse clip because the sequence is monotone). Otherwise the pulses are applied one at a time, vectorised over
the devices that still have pulses left (a loop bounded by max |n|).

Common non-idealities: ``stuck_at_min_frac`` / ``stuck_at_max_frac`` (devices that sit at their own bound and
ignore programming), drift ``G(t) = G (max(t, t0)/t0)^-nu`` with nu ~ N(drift_nu, drift_nu_std) per device
(clipped at 0), read noise ``N(0, read_noise_std G_max)`` fresh on every read.

Physical floor: aihwkit has no notion of a non-negative conductance; a device whose sampled lower bound would be
below 0 S is floored at 0 S (documented per card where this can happen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from . import kernels as _kernels
from . import neurosim as ns
from .cards import STEP_MODELS, DeviceCard

__all__ = ["DeviceArray", "Tally", "pulse_response"]

SPARSE_FRACTION = 0.25
"""``apply_pulses`` runs the device model on the pulsed devices only when at most this fraction is pulsed (and
``DifferentialArray`` programs the pulsed pairs only, by flat index, under the same bound)."""


@lru_cache(maxsize=1)
def _label_u_table() -> tuple[list[float], list[float]]:
    """(labels, u = 1/a_norm) on a 0.0025 grid over [0, 9], for vectorised d2d label -> A."""
    labels = [i * 0.0025 for i in range(3601)]
    us = [0.0] + [1.0 / ns.a_norm_from_label(x) for x in labels[1:]]
    return labels, us


def _u_of_labels(nl: torch.Tensor) -> torch.Tensor:
    """1/a_norm for a tensor of labels (linear interpolation of the exact relation; signed)."""
    labels, us = _label_u_table()
    lab = torch.tensor(labels, dtype=torch.float64, device=nl.device)
    u = torch.tensor(us, dtype=torch.float64, device=nl.device)
    x = nl.abs().to(torch.float64).clamp(max=9.0)
    i = torch.bucketize(x, lab).clamp(1, len(labels) - 1)
    x0, x1, u0, u1 = lab[i - 1], lab[i], u[i - 1], u[i]
    val = u0 + (u1 - u0) * (x - x0) / (x1 - x0)
    return (torch.sign(nl.to(torch.float64)) * val).to(nl.dtype)


def _scatter(g: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``g`` with ``g.flat[idx] = values``, written in place when ``g`` is contiguous (else into a copy)."""
    g = g if g.is_contiguous() else g.contiguous()
    g.view(-1).index_copy_(0, idx, values)
    return g


_INT32_MAX = 2 ** 31 - 1


class Tally:
    """Integer counts per device, totalled in int64: an add with a known bound on its entries goes into an int32
    part (half the memory traffic of an int64 add, and no widening copy), folded into the int64 total before the part
    could overflow; the sparse adds of :meth:`add_at` are kept as they come and summed into the total in one pass
    when it is read or when they reach the size of the array (a scattered read-modify-write of a large counter per
    request costs a cache miss per device, which a training step would pay on every pulsed device). ``value`` is
    the total (folded first)."""

    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        self._total = torch.zeros(shape, dtype=torch.int64, device=device)
        self._part: torch.Tensor | None = None
        self._room = _INT32_MAX
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_n = 0

    def add(self, n: torch.Tensor, bound: int | None = None) -> None:
        """Add the integer counts ``n`` (broadcastable to the shape); ``bound``: an upper bound of every ``|n|``
        (``None``: unknown, added to the int64 total directly)."""
        if bound is None or n.dtype != torch.int32 or bound > _INT32_MAX // 2:
            self._total += n
            return
        if bound > self._room:
            self.fold()
        if self._part is None:
            self._part = torch.zeros(self._total.shape, dtype=torch.int32, device=self._total.device)
        self._part += n
        self._room -= bound

    def add_at(self, idx: torch.Tensor, n: torch.Tensor) -> None:
        """Add int64 counts ``n`` at the flat indices ``idx`` (distinct within one call); summed into the total
        later (class docstring). The tensors are kept, not copied: the caller must not write to them afterwards."""
        self._pending.append((idx, n))
        self._pending_n += idx.numel()
        if self._pending_n >= max(self._total.numel(), 1 << 16):
            self._flush()

    def _flush(self) -> None:
        """Sum the pending sparse adds into the total: compiled on the CPU (:func:`kernels.add_at`, one pass per
        add), else one ``bincount`` (exact in float64 while every bin's sum stays below 2^53: at most one entry per
        bin per add, so ``max|n| · adds < 2^53``) or ``index_add_``."""
        if not self._pending:
            return
        pending, adds = self._pending, len(self._pending)
        self._pending, self._pending_n = [], 0
        if not self._total.is_contiguous():
            self._total = self._total.contiguous()
        flat = self._total.view(-1)
        if flat.device.type == "cpu" and _kernels.available():
            for idx, n in pending:
                _kernels.add_at(flat, idx, n)
            return
        idx = torch.cat([p[0] for p in pending])
        n = torch.cat([p[1] for p in pending])
        if n.numel() == 0:
            return
        if int(n.abs().max()) * adds < 2 ** 53:
            flat += torch.bincount(idx, weights=n.to(torch.float64), minlength=flat.numel()).to(torch.int64)
        else:
            flat.index_add_(0, idx, n)

    def fold(self) -> None:
        """Move the int32 part and the pending sparse adds into the int64 total."""
        if self._room < _INT32_MAX:
            self._total += self._part
            self._part.zero_()
            self._room = _INT32_MAX
        self._flush()

    @property
    def value(self) -> torch.Tensor:
        self.fold()
        return self._total

    @value.setter
    def value(self, total: torch.Tensor) -> None:
        self._total, self._part, self._room = total, None, _INT32_MAX
        self._pending, self._pending_n = [], 0


class DeviceArray:
    """An array of devices of one card. See the module docstring for the equations.

    Parameters: ``card``; ``shape`` (int or tuple); ``generator`` (a seeded :class:`torch.Generator`, used for the
    d2d sampling at construction and, unless another is passed, for the per-pulse / per-read noise);
    ``device``, ``dtype``; ``g_init``: initial conductance ("min" (default, NeuroSim's initial state), "max",
    "center" (aihwkit's w = 0 for step models, mid-range otherwise), a number [S] or a tensor [S]).

    Attributes: ``g`` (conductances as programmed [S], without read noise or drift), ``g_min``/``g_max``
    (per-device bounds after d2d [S]), ``stuck_min``/``stuck_max`` (bool masks), ``nu`` (drift exponents or None),
    ``pulse_count`` (int64 per device), ``read_count`` (number of whole-array reads), ``dg_nominal`` [S].
    """

    def __init__(self, card: DeviceCard, shape: int | Sequence[int], *, generator: torch.Generator,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 g_init: str | float | torch.Tensor | None = None) -> None:
        if not isinstance(card, DeviceCard):
            raise TypeError(f"card must be a DeviceCard, not {type(card).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (seeded), e.g. torch.Generator().manual_seed(0)")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
        self.card = card
        self.shape = torch.Size((shape,) if isinstance(shape, int) else tuple(shape))
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = generator
        self.model = card.model
        self._pulses = Tally(self.shape, self.device)
        self.read_count = 0
        self._g_app: torch.Tensor | None = None
        self._sample()
        self._closed_ok = self._closed_form_check()  # decided for the whole array (subsets inherit it)
        self._gp = self._initial(g_init)

    def __repr__(self) -> str:
        return (f"DeviceArray({self.card.name!r}, model={self.model}, shape={tuple(self.shape)}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ random numbers
    def _gen_ok(self, gen: torch.Generator) -> bool:
        gd = gen.device
        return gd.type == self.device.type and (gd.index is None or self.device.index is None
                                                 or gd.index == self.device.index)

    def _randn(self, shape: Sequence[int] | torch.Size | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator or self.generator
        shape = self.shape if shape is None else shape
        if self._gen_ok(gen):
            return torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)
        return torch.randn(shape, generator=gen, device=gen.device, dtype=self.dtype).to(self.device)

    def _rand(self, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator or self.generator
        if self._gen_ok(gen):
            return torch.rand(self.shape, generator=gen, device=self.device, dtype=self.dtype)
        return torch.rand(self.shape, generator=gen, device=gen.device, dtype=self.dtype).to(self.device)

    def _t(self, x: float) -> torch.Tensor:
        return torch.full(self.shape, float(x), dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ construction
    def _sample(self) -> None:
        c = self.card
        if self.model in STEP_MODELS:
            self._sample_step()
        else:
            x_min, x_max = self._randn(), self._randn()
            g_min = (c.g_min * (1 + c.g_min_dtod * x_min)).clamp(min=0.0)
            g_max = c.g_max * (1 + c.g_max_dtod * x_max)
            self.g_min = g_min
            self.g_max = torch.maximum(g_max, g_min + 1e-3 * c.g_range)
            if self.model == "neurosim":
                x_ltp, x_ltd = self._randn(), self._randn()
                if c.nl_dtod > 0:
                    nl_ltp = (c.nl_ltp + c.nl_dtod * x_ltp).clamp(-9.0, 9.0)
                    nl_ltd = (c.nl_ltd + c.nl_dtod * x_ltd).clamp(-9.0, 9.0)
                    u_ltp, u_ltd = _u_of_labels(nl_ltp), _u_of_labels(nl_ltd)
                    inf = torch.full_like(u_ltp, math.inf)
                    self.a_ltp = torch.where(u_ltp == 0, inf, c.max_pulses / torch.where(u_ltp == 0, 1.0, u_ltp))
                    self.a_ltd = torch.where(u_ltd == 0, inf,
                                             c.max_pulses_down / torch.where(u_ltd == 0, 1.0, u_ltd))
                else:
                    self.a_ltp = self._t(ns.param_a(c.nl_ltp, c.max_pulses))
                    self.a_ltd = self._t(ns.param_a(c.nl_ltd, c.max_pulses_down))
        u = self._rand()
        self.stuck_min = u < c.stuck_at_min_frac
        self.stuck_max = (u >= c.stuck_at_min_frac) & (u < c.stuck_at_min_frac + c.stuck_at_max_frac)
        self.stuck = self.stuck_min | self.stuck_max
        self._any_stuck = bool(self.stuck.any())
        if c.drift_nu > 0 or c.drift_nu_std > 0:
            self.nu = (c.drift_nu + c.drift_nu_std * self._randn()).clamp(min=0.0)
        else:
            self.nu = None

    def _sample_step(self) -> None:
        c = self.card
        self.s = c.g_range / c.w_range  # S per unit of w
        self.g_ref = c.g_ref
        dw = c.dw_min * c.w_range  # aihwkit dw_min, in w units
        x_max, x_min, x_gain, x_r = self._randn(), self._randn(), self._randn(), self._randn()
        b_max = c.w_max * (1 + c.w_max_dtod * x_max)
        b_min = c.w_min * (1 + c.w_min_dtod * x_min)
        swap = b_min > b_max  # aihwkit enforce_consistency
        b_max, b_min = torch.where(swap, b_min, b_max).abs(), -torch.where(swap, b_max, b_min).abs()
        # physical floor: no negative conductance
        b_min = torch.maximum(b_min, torch.full_like(b_min, -self.g_ref / self.s))
        self.b_min, self.b_max = b_min, b_max
        up_bias = min(c.up_down, 0.0)
        down_bias = -max(c.up_down, 0.0)
        gain = 1 + c.dw_min_dtod * x_gain
        r = c.up_down_dtod * x_r
        self.s_up = ((up_bias + gain + r) * dw).abs()
        self.s_dn = ((down_bias + gain - r) * dw).abs()
        self.k_up = torch.zeros_like(b_max)
        self.k_dn = torch.zeros_like(b_max)
        if self.model in ("linear_step", "soft_bounds"):
            x_gu, x_gd = self._randn(), self._randn()
            if self.model == "soft_bounds":
                d_up, d_dn, ref_up, ref_dn = 1.0, 1.0, b_max, b_min
            else:
                d_up = (c.gamma_up + c.gamma_up_dtod * x_gu).abs()
                d_dn = (c.gamma_down + c.gamma_down_dtod * x_gd).abs()
                ref_up, ref_dn = (self._t(c.w_max), self._t(c.w_min)) if c.mean_bound_reference else (b_max, b_min)
            self.k_up = torch.where(ref_up != 0, -d_up * self.s_up / torch.where(ref_up != 0, ref_up, 1.0), 0.0)
            self.k_dn = torch.where(ref_dn != 0, -d_dn * self.s_dn / torch.where(ref_dn != 0, ref_dn, 1.0), 0.0)
        self.g_min = self.g_ref + self.s * b_min
        self.g_max = self.g_ref + self.s * b_max

    def _initial(self, g_init) -> torch.Tensor:
        if g_init is None or (isinstance(g_init, str) and g_init == "min"):
            g = self.g_min.clone()
        elif isinstance(g_init, str):
            if g_init == "max":
                g = self.g_max.clone()
            elif g_init == "center":
                g = self._t(self.g_ref) if self.model in STEP_MODELS else 0.5 * (self.g_min + self.g_max)
            else:
                raise ValueError(f"g_init must be 'min', 'max', 'center', a conductance [S] or a tensor, "
                                 f"not {g_init!r}")
        else:
            g = torch.as_tensor(g_init, dtype=self.dtype, device=self.device).expand(self.shape).clone()
        g = torch.minimum(torch.maximum(g, self.g_min), self.g_max)
        return self._stick(g)

    def _stick(self, g: torch.Tensor) -> torch.Tensor:
        return torch.where(self.stuck_min, self.g_min, torch.where(self.stuck_max, self.g_max, g))

    # ------------------------------------------------------------------ public state
    @property
    def g(self) -> torch.Tensor:
        """Programmed conductances [S] (with write noise where the card has it; no drift, no read noise)."""
        return self._gp if self._g_app is None else self._g_app

    @g.setter
    def g(self, value) -> None:
        """``arr.g = x`` is ``arr.set_conductance(x, count_pulses=False)`` (clipped, NeuroSim levels snapped)."""
        self.set_conductance(value, count_pulses=False)

    @property
    def pulse_count(self) -> torch.Tensor:
        """Pulses received per device, int64 (every pulse counted, stuck devices included)."""
        return self._pulses.value

    @pulse_count.setter
    def pulse_count(self, value: torch.Tensor) -> None:
        self._pulses.value = value

    @property
    def g_persistent(self) -> torch.Tensor:
        """The hidden conductance the updates act on (equal to ``g`` without write noise)."""
        return self._gp

    @property
    def dg_nominal(self) -> float:
        """Nominal smallest step [S] (range / levels, or dw_min * range)."""
        return self.card.dg_nominal

    @property
    def numel(self) -> int:
        return self.shape.numel()

    def n_levels_between_bounds(self, direction: str = "up") -> int | None:
        """Pulses from one nominal bound to the other for finite-state models (NeuroSim: max_pulses, LTD:
        max_pulses_ltd; constant step: 1/(dw_min (1 -+ up_down bias)) with its mean step; ideal: 1/dw_min); None
        for soft bounds / linear / exp step, whose steps depend on the state."""
        if direction not in ("up", "down"):
            raise ValueError("direction must be 'up' or 'down'")
        c = self.card
        if self.model == "neurosim":
            return c.max_pulses if direction == "up" else c.max_pulses_down
        if self.model == "ideal":
            return int(math.ceil(1.0 / c.dw_min - 1e-9))
        if self.model == "constant_step":
            frac = c.dw_min * ((1 + min(c.up_down, 0.0)) if direction == "up" else (1 - max(c.up_down, 0.0)))
            return int(math.ceil(1.0 / frac - 1e-9))
        return None

    def energy(self) -> float:
        """Energy spent so far [J]: pulses x pulse_energy + reads x devices x energy_per_read."""
        c = self.card
        return float(self.pulse_count.sum().item()) * c.pulse_energy + self.read_count * self.numel * \
            c.energy_per_read

    # ------------------------------------------------------------------ programming
    def _as_counts(self, n) -> torch.Tensor:
        n = torch.as_tensor(n, device=self.device)
        if n.is_floating_point():
            if not torch.equal(n, torch.round(n)):
                raise ValueError("pulse counts must be integers")
        elif n.dtype == torch.bool:
            raise ValueError("pulse counts must be integers, not booleans")
        if n.dtype not in (torch.int32, torch.int64):
            n = n.to(torch.int64)
        return n.expand(self.shape)

    def apply_pulses(self, n, generator: torch.Generator | None = None, *,
                     delta: bool = True) -> torch.Tensor | None:
        """Apply |n| pulses per device (n > 0 potentiation, n < 0 depression); returns the realised change of
        ``g`` [S] (``delta=False``: ``None``, not computed). Stuck devices receive (and count) the pulses but do not
        change. Integer counts (int32 counts stay int32)."""
        n = self._as_counts(n)
        return self._apply_counts(n, n.abs(), generator, delta)

    def _apply_counts(self, n: torch.Tensor, n_abs: torch.Tensor, generator: torch.Generator | None,
                      delta: bool, bound: int | None = None) -> torch.Tensor | None:
        """:meth:`apply_pulses` of checked counts ``n`` whose ``|n|`` the caller has already (``n_abs``; ``bound``:
        an upper bound of it if known, see :class:`Tally`)."""
        self._pulses.add(n_abs, bound)
        n_eff = torch.where(self.stuck, torch.zeros_like(n), n) if self._any_stuck else n
        pulsed = int(n_eff.count_nonzero())  # the indices only when sparse (a dense nonzero() is costly)
        if pulsed == 0:
            return torch.zeros_like(self.g) if delta else None
        if pulsed <= SPARSE_FRACTION * self.numel:
            # few devices pulsed (small stochastic-rounding updates): run the model on those devices only
            idx = n_eff.reshape(-1).nonzero().squeeze(1)
            before = self.g.clone() if delta else None  # the sparse path writes the pulsed devices in place
            self._advance_at(idx, n_eff.reshape(-1)[idx], generator)
        else:
            before = self.g  # the dense path replaces the tensors
            self._advance_dense(n_eff, generator)
        return self.g - before if delta else None

    def apply_pulses_at(self, idx: torch.Tensor, n: torch.Tensor, generator: torch.Generator | None = None, *,
                        delta: bool = True) -> torch.Tensor | None:
        """:meth:`apply_pulses` for sparse counts: ``n[i]`` pulses on the device of flat index ``idx[i]`` (``idx``:
        distinct, ascending int64 indices into the flattened array; ``n``: integer counts, zeros allowed), none on
        the others. Returns the realised change of ``g`` [S] at ``idx`` (shape of ``idx``; ``delta=False``: ``None``,
        not computed). Same state, counters and random draws as ``apply_pulses`` of the scattered counts, without a
        pass over the whole array except the writes of the pulsed devices (in place: the tensors' ``_version``
        moves, see :meth:`_advance_at`)."""
        if idx.dim() != 1 or n.shape != idx.shape:
            raise ValueError(f"idx {tuple(idx.shape)} and n {tuple(n.shape)}: two 1-D tensors of one length expected")
        n = n.to(torch.int64)
        self._pulses.add_at(idx, n.abs())
        live = n != 0
        if self._any_stuck:
            live &= ~self.stuck.reshape(-1).index_select(0, idx)
        out = torch.zeros(idx.shape, dtype=self.dtype, device=self.device) if delta else None
        if bool(live.all()):  # every listed device moves (the pair's case): no compaction
            j, sel, n_sel = None, idx, n
        else:
            j = live.nonzero().squeeze(1)
            sel, n_sel = idx.index_select(0, j), n.index_select(0, j)
        if sel.numel() == 0:
            return out
        before = self.g.reshape(-1).index_select(0, sel) if delta else None
        if sel.numel() <= SPARSE_FRACTION * self.numel:
            self._advance_at(sel, n_sel, generator)
        else:  # as apply_pulses: the dense model path beyond SPARSE_FRACTION
            n_eff = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
            n_eff.view(-1).index_copy_(0, sel, n_sel)
            self._advance_dense(n_eff, generator)
        if not delta:
            return None
        dg = self.g.reshape(-1).index_select(0, sel).sub_(before)
        return dg if j is None else out.index_copy_(0, j, dg)

    def _advance_dense(self, n_eff: torch.Tensor, generator) -> None:
        """Advance every device by ``n_eff`` (stuck devices already zeroed) and redraw the write noise of the pulsed
        ones."""
        self._gp = self._advance(self._gp, n_eff, generator)
        if self._has_write_noise():
            self._write_noise(n_eff != 0, generator)

    def _advance_at(self, idx: torch.Tensor, n_eff: torch.Tensor, generator) -> None:
        """Advance the devices ``idx`` (flat, distinct, ascending, not stuck) by ``n_eff`` (nonzero): the model runs
        on the gathered devices (:meth:`_subset`, random draws of their size), the result is scattered into the
        conductance tensors in place (no copy of the array per update; readers that cache what they derive from
        ``g`` key it on the tensor and its ``_version``, which every in-place write moves)."""
        if self._loops():  # the pulse loop gathers what it reads itself: no subset array
            xi = self._pulse_normals(n_eff, generator)
            xw = self._randn(idx.shape, generator) if self._has_write_noise() else None
            if self._compiled():
                self._gp = self._gp.contiguous()
                if xw is not None and self._g_app is None:
                    self._g_app = self._gp.clone()
                self._kernel(self._gp, idx, n_eff, xi, xw, self._g_app if xw is not None else None)
                return
            values = self._step_at(self._gp, idx, n_eff, xi)
            self._gp = _scatter(self._gp, idx, values)
            if xw is not None:
                app = self._noisy(values, xw)
                self._g_app = _scatter(self._g_app if self._g_app is not None else self._gp.clone(), idx, app)
            return
        sub = self._subset(idx)
        sub._gp = sub._advance(sub._gp, n_eff, generator)
        sub._write_noise(torch.ones(idx.numel(), dtype=torch.bool, device=self.device), generator)
        self._gp = _scatter(self._gp, idx, sub._gp)
        if sub._g_app is not None:
            app = self._g_app if self._g_app is not None else self._gp.clone()
            self._g_app = _scatter(app, idx, sub._g_app)

    # per-device tensors that the model of a subset does not read (counters, stuck masks, drift)
    _NOT_IN_SUBSET = frozenset({"stuck", "stuck_min", "stuck_max", "nu"})

    def _subset(self, idx: torch.Tensor) -> DeviceArray:
        """A shallow copy holding only the devices ``idx`` (flat indices): every per-device tensor the model reads
        gathered (counters, stuck masks and drift exponents are left out: the subset is only advanced)."""
        sub = object.__new__(DeviceArray)
        sub.__dict__.update(self.__dict__)
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor) and value.shape == self.shape:
                sub.__dict__[key] = None if key in self._NOT_IN_SUBSET else value.reshape(-1).index_select(0, idx)
        sub._pulses = None  # the pulses are counted on the whole array
        sub.shape = torch.Size((idx.numel(),))
        return sub

    def _advance(self, gp: torch.Tensor, n_eff: torch.Tensor, generator) -> torch.Tensor:
        """The model's persistent conductances after ``n_eff`` pulses per device."""
        if self.model == "neurosim":
            gp = self._neurosim(gp, n_eff, generator)
        elif self.model == "ideal":
            gp = self._ideal(gp, n_eff, generator)
        elif self._closed_form_ok():
            gp = self._step_closed(gp, n_eff)
        else:
            gp = self._step_loop(gp, n_eff, generator)
        return gp

    def set_conductance(self, g_target, *, count_pulses: bool = True,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        """Program conductances directly (refresh; program-and-verify): the target is clipped to each device's
        bounds and, for NeuroSim, snapped to the nearest level of the LTP curve; write noise is redrawn.
        Cost model: the pulses counted are the nominal steps traversed, ``round(|g_new - g_old| / dg_nominal)``.
        ``mask`` (bool, broadcastable to the shape): program only those devices, the others keep their state,
        write noise and counts. Stuck devices keep their value. Returns the new ``g``."""
        sel = ~self.stuck
        if mask is not None:
            sel = sel & torch.as_tensor(mask, dtype=torch.bool, device=self.device).expand(self.shape)
        tgt = torch.as_tensor(g_target, dtype=self.dtype, device=self.device).expand(self.shape)
        tgt = torch.minimum(torch.maximum(tgt, self.g_min), self.g_max)
        if self.model == "neurosim":
            c = self.card
            p = torch.round(ns.inverse_curve(tgt, self.a_ltp, c.max_pulses, self.g_min, self.g_max))
            tgt = ns.curve(p, self.a_ltp, c.max_pulses, self.g_min, self.g_max)
            tgt = torch.minimum(torch.maximum(tgt, self.g_min), self.g_max)
        new = torch.where(sel, tgt, self._gp)
        if count_pulses:
            steps = torch.round((new - self._gp).abs() / self.dg_nominal).to(torch.int64)
            self.pulse_count += torch.where(sel, steps, torch.zeros_like(steps))
        self._gp = new
        self._write_noise(sel, None)
        return self.g

    def reset(self, to: str = "min", *, count_pulses: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Program every device (or those in ``mask``) to its own bound (``to`` = "min" or "max")."""
        if to not in ("min", "max"):
            raise ValueError("reset(to=...) must be 'min' or 'max'")
        return self.set_conductance(self.g_min if to == "min" else self.g_max, count_pulses=count_pulses, mask=mask)

    # ------------------------------------------------------------------ reading
    def read(self, t: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Conductances as read [S]: drift ``g (max(t, t0)/t0)^-nu`` when ``t`` (seconds since programming) is given
        and the card drifts, stuck devices at their bound, plus fresh read noise ``N(0, read_noise_std g_max)``."""
        c = self.card
        g = self.drifted(t)
        if c.read_noise_std > 0:
            g = g + c.read_noise_std * c.g_max * self._randn(generator=generator)
        self.read_count += 1
        return g

    def drifted(self, t: float | None = None) -> torch.Tensor:
        """Conductances at read time ``t`` [s] without read noise [S]: drift ``g (max(t, t0)/t0)^-nu`` and stuck
        devices when ``t`` is given and the card drifts, else ``g`` itself (the mean of a noisy :meth:`read`; not
        counted as a read)."""
        t = self._read_time(t)
        if t is None or self.nu is None:
            return self.g
        c = self.card
        return self._stick(self.g * (max(t, c.drift_t0) / c.drift_t0) ** (-self.nu))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The array's state for a checkpoint: every per-device tensor (conductances, and the bounds, step and drift
        parameters and stuck masks of its device-to-device sample), the pulse and read counters."""
        return {"tensors": {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)},
                "pulses": self._pulses.value, "read_count": self.read_count}

    def load_state_dict(self, state: dict, where: str = "device array") -> None:
        """Restore :meth:`state_dict` (of an array of the same card and shape: every tensor checked)."""
        tensors = state["tensors"]
        mine = {k for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        if set(tensors) - {"_g_app"} != mine - {"_g_app"}:
            raise ValueError(f"{where}: the saved device state has {sorted(tensors)}, this {self.card.name!r} "
                             f"array {sorted(mine)}: another device model")
        for k, v in tensors.items():
            cur = getattr(self, k)
            if cur is not None and (v.shape != cur.shape or v.dtype != cur.dtype):
                raise ValueError(f"{where}: saved {k} has shape {tuple(v.shape)} ({v.dtype}), the array "
                                 f"{tuple(cur.shape)} ({cur.dtype})")
            setattr(self, k, v.to(self.device).clone())
        if "_g_app" not in tensors:
            self._g_app = None
        self._any_stuck = bool(self.stuck.any())
        self._pulses.value = state["pulses"].to(self.device).clone()
        self.read_count = int(state["read_count"])

    def read_is_exact(self, t: float | None = None) -> bool:
        """Whether :meth:`read` at ``t`` returns ``g`` itself (no read noise, no drift at ``t``): then every such read
        is the programmed state, and a reader may use ``g`` directly (counting the reads: ``read_count``)."""
        t = self._read_time(t)
        return self.card.read_noise_std <= 0 and (t is None or self.nu is None)

    @staticmethod
    def _read_time(t: float | None) -> float | None:
        if t is None:
            return None
        t = float(t)
        if not t > 0:
            raise ValueError(f"read time t must be > 0 s, got {t}")
        return t

    # ------------------------------------------------------------------ model internals
    def _has_write_noise(self) -> bool:
        return self.model in STEP_MODELS and self.card.write_noise_std > 0

    def _write_sigma(self) -> float:
        c = self.card
        return c.write_noise_std * c.dw_min * c.w_range * self.s  # aihwkit: write_noise_std * dw_min, in S

    def _noisy(self, gp: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Persistent conductances ``gp`` as applied: ``max(gp + σ_write ξ, 0)`` for the standard normals ``xi``
        (a fresh write-noise draw, overwritten)."""
        return xi.mul_(self._write_sigma()).add_(gp).clamp_(min=0.0)

    def _write_noise(self, touched: torch.Tensor, generator) -> None:
        if not self._has_write_noise():
            return
        app = self._noisy(self._gp, self._randn(self._gp.shape, generator))
        base = self._gp if self._g_app is None else self._g_app
        self._g_app = torch.where(touched, app, base)

    def _neurosim(self, gp: torch.Tensor, n: torch.Tensor, generator) -> torch.Tensor:
        c = self.card
        nf = n.to(self.dtype)
        p_up = ns.inverse_curve(gp, self.a_ltp, c.max_pulses, self.g_min, self.g_max)
        g_up = ns.curve(p_up + nf, self.a_ltp, c.max_pulses, self.g_min, self.g_max)
        p_dn = ns.inverse_curve(gp, self.a_ltd, c.max_pulses_down, self.g_min, self.g_max)
        g_dn = ns.curve(p_dn + nf, self.a_ltd, c.max_pulses_down, self.g_min, self.g_max)
        g = torch.where(n > 0, g_up, torch.where(n < 0, g_dn, gp))
        if c.c2c_sigma > 0:
            g = g + torch.where(n != 0, c.c2c_sigma * c.g_range * nf.abs().sqrt() * self._randn(generator=generator),
                                0.0)
        g = torch.minimum(torch.maximum(g, self.g_min), self.g_max)
        return torch.where(n != 0, g, gp)

    def _ideal(self, gp: torch.Tensor, n: torch.Tensor, generator) -> torch.Tensor:
        c = self.card
        nf = n.to(self.dtype)
        if c.c2c_sigma > 0:
            g = gp + nf * c.dg_nominal
            g = g + torch.where(n != 0, c.c2c_sigma * c.g_range * nf.abs().sqrt() * self._randn(generator=generator),
                                0.0)
        else:  # gp + n·dg in place in the fresh nf (the same bits)
            g = nf.mul_(c.dg_nominal).add_(gp)
        return g.clamp_(min=self.g_min, max=self.g_max)  # min(max(g, g_min), g_max), in place

    def _closed_form_ok(self) -> bool:
        """Whether the closed form applies, decided at construction for the whole array: a subset of its devices
        (:meth:`_subset`) takes the same path as the whole array."""
        return self._closed_ok

    def _closed_form_check(self) -> bool:
        if self.model not in ("constant_step", "linear_step", "soft_bounds") or self.card.dw_min_std > 0:
            return False
        # the affine step maps must contract monotonically (0 < r <= 1)
        return bool(((1 + self.k_up) > 0).all() and ((1 - self.k_dn) > 0).all())

    def _step_closed(self, gp: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        w = (gp - self.g_ref) / self.s
        nf = n.to(self.dtype)
        m = nf.abs()
        if self.model == "constant_step":
            w_new = torch.where(n > 0, w + m * self.s_up, w - m * self.s_dn)
        else:
            w_up = self._affine(w, m, 1 + self.k_up, self.s_up)
            w_dn = self._affine(w, m, 1 - self.k_dn, -self.s_dn)
            w_new = torch.where(n > 0, w_up, w_dn)
        w_new = torch.minimum(torch.maximum(w_new, self.b_min), self.b_max)
        w_new = torch.where(n != 0, w_new, w)
        return torch.where(n != 0, self.g_ref + self.s * w_new, gp)

    @staticmethod
    def _affine(w: torch.Tensor, m: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """m-fold iterate of w -> r w + c: r^m w + c (1 - r^m)/(1 - r) (= c m for r = 1)."""
        log_r = torch.log(r)
        rm = torch.exp(m * log_r)
        one_minus_r = 1 - r
        geo = torch.where(one_minus_r.abs() > 1e-12, -torch.expm1(m * log_r) / torch.where(
            one_minus_r.abs() > 1e-12, one_minus_r, 1.0), m)
        return rm * w + c * geo

    def _step_loop(self, gp: torch.Tensor, n: torch.Tensor, generator) -> torch.Tensor:
        flat_n = n.reshape(-1)
        idx = torch.nonzero(flat_n, as_tuple=True)[0]
        n_idx = flat_n.index_select(0, idx).to(torch.int64)
        xi = self._pulse_normals(n_idx, generator)
        out = gp.reshape(-1).clone()
        if self._compiled():
            self._kernel(out, idx, n_idx, xi, None, None)
        else:
            out.index_copy_(0, idx, self._step_at(gp, idx, n_idx, xi))
        return out.reshape(self.shape)

    def _draws_per_pulse(self) -> bool:
        """Whether a pulse of this step model draws a cycle-to-cycle normal."""
        c = self.card
        return c.dw_min_std > 0 or (self.model == "exp_step" and (c.dw_min_std_add > 0 or c.dw_min_std_slope > 0))

    def _pulse_normals(self, n_idx: torch.Tensor, generator) -> torch.Tensor | None:
        """The cycle-to-cycle normals of one update of the pulsed devices (counts ``n_idx``), level-major: pulse 0
        of every device, then pulse 1 of those with more, ... (:meth:`_step_at`); ``None`` if the model draws
        none. One draw of ``sum |n|``, shared by the torch and the compiled pulse loops."""
        if not self._draws_per_pulse() or n_idx.numel() == 0:
            return None
        return self._randn((int(n_idx.abs().sum()),), generator)

    def _compiled(self) -> bool:
        """Whether the pulse loop runs compiled (:mod:`~neuromorph.devices.kernels`): a CPU array, library built."""
        return self.device.type == "cpu" and _kernels.available()

    def _kernel(self, gp: torch.Tensor, idx: torch.Tensor, n_idx: torch.Tensor, xi: torch.Tensor | None,
                xw: torch.Tensor | None, gapp: torch.Tensor | None) -> None:
        """The compiled pulse loop in place on the contiguous ``gp`` (and ``gapp`` with the write-noise normals
        ``xw``); moves the written tensors' ``_version``, as an in-place torch write does."""
        c = self.card
        model = self.model
        if model == "exp_step" and (c.dw_min_std_add > 0 or c.dw_min_std_slope > 0):
            model = "exp_step_complex"
        elif model in ("linear_step", "soft_bounds"):  # linear steps; the noise on the step or on all of it
            model = "linear_step_mult" if c.mult_noise else "linear_step"
        rows, consts = self._kernel_rows()
        _kernels.step(_kernels.MODELS[model], idx.contiguous(), n_idx.to(torch.int64).contiguous(), gp, gapp,
                      rows, consts, xi, xw, sigma=c.dw_min_std, add_std=c.dw_min_std_add * c.w_range,
                      slope_std=c.dw_min_std_slope, s=self.s, g_ref=self.g_ref,
                      sw=self._write_sigma() if xw is not None else 0.0)
        for t in (gp, gapp):
            if t is not None:
                t.view(-1)[:0].zero_()  # moves the version counter (an empty in-place write)

    def _loops(self) -> bool:
        """Whether the model runs pulse by pulse (:meth:`_step_at`): a step model without a closed form."""
        return self.model not in ("neurosim", "ideal") and not self._closed_form_ok()

    _STEP_PARAMS = ("b_min", "b_max", "s_up", "s_dn", "k_up", "k_dn")

    def _kernel_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled loop's parameters: rows ``(N, 4)`` of ``b_min, b_max, s_up, s_dn`` (``(N, 6)`` with
        ``k_up, k_dn`` for the linear steps), built once (and again if a parameter tensor is replaced), and
        exp_step's constants ``2a, γ_up, -γ_down, γ_up b, -γ_down b, A_up, -A_down`` (``_pulse_kernel.c``)."""
        key = tuple(getattr(self, k) for k in self._STEP_PARAMS)
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            width = 6 if self.model in ("linear_step", "soft_bounds") else 4
            rows = torch.stack([t.expand(self.shape).reshape(-1) for t in key[:width]], 1).contiguous()
            c = self.card
            consts = torch.tensor([2.0 * c.a, c.gamma_up, -c.gamma_down, c.gamma_up * c.b, -c.gamma_down * c.b,
                                   c.A_up, -c.A_down], dtype=self.dtype)
            cached = self._kernel_cache = (key, rows, consts)
        return cached[1], cached[2]

    def _step_table(self) -> torch.Tensor:
        """The step models' per-device parameters as rows ``(2N, 8)``, row ``2i`` for a potentiation of device ``i``
        and ``2i + 1`` for a depression, built once (and again if a parameter tensor is replaced): the pulse loop
        gathers each pulsed device's row for its direction in one ``index_select``. Columns: ``b_min``, ``b_max``,
        the signed step ``s`` (``s_up`` / ``-s_dn``), the slope ``k`` (``k_up`` / ``-k_dn``; exp_step: ``G = γ·2a /
        (b_max - b_min)``), exp_step's ``H = γ b`` and ``A·s``, and the bounds ``lo``, ``hi`` of a step (exp_step:
        ``[0, ∞)`` up, ``(-∞, 0]`` down), with ``(γ, A) = (γ_up, A_up)`` up and ``(-γ_down, A_down)`` down; so that
        exp_step's ``max(1 - A e^{γ z}, 0)·s`` is ``clamp(s - A s·e^{G w + H}, lo, hi)``."""
        key = tuple(getattr(self, k) for k in self._STEP_PARAMS)
        cached = self.__dict__.get("_step_rows")
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            c = self.card
            b_min, b_max, s_up, s_dn, k_up, k_dn = (t.expand(self.shape).reshape(-1) for t in key)
            inf = torch.full_like(b_min, math.inf)
            zero = torch.zeros_like(b_min)
            if self.model == "exp_step":
                inv_bdiff = torch.full_like(b_min, 2.0 * c.a) / (b_max - b_min).clamp(min=1e-30)
                slope = (c.gamma_up * inv_bdiff, -c.gamma_down * inv_bdiff)
                h = (torch.full_like(b_min, c.gamma_up * c.b), torch.full_like(b_min, -c.gamma_down * c.b))
                a_s = (c.A_up * s_up, -c.A_down * s_dn)
                lo, hi = (zero, -inf), (inf, zero)
            else:
                slope, h, a_s, lo, hi = (k_up, -k_dn), (zero, zero), (zero, zero), (-inf, -inf), (inf, inf)
            up = torch.stack([b_min, b_max, s_up, slope[0], h[0], a_s[0], lo[0], hi[0]], 1)
            down = torch.stack([b_min, b_max, -s_dn, slope[1], h[1], a_s[1], lo[1], hi[1]], 1)
            cached = self._step_rows = (key, torch.stack([up, down], 1).reshape(-1, 8))
        return cached[1]

    def _step_at(self, gp: torch.Tensor, idx: torch.Tensor, n_idx: torch.Tensor,
                 xi: torch.Tensor | None) -> torch.Tensor:
        """The step models' pulse-by-pulse update of the devices ``idx`` (flat) by their nonzero counts ``n_idx``,
        on those devices only: their new persistent conductances [S], in the order of ``idx``. The first pulse runs on
        every device; pulse ``k`` on the devices with more than ``k`` pulses, gathered from those of pulse ``k - 1``
        (one ``nonzero`` over a shrinking set per pulse; the results scattered back at the end). ``xi``: the
        cycle-to-cycle normals (:meth:`_pulse_normals`), consumed pulse by pulse in that order."""
        m = n_idx.abs()
        rows = self._step_table().index_select(0, idx * 2 + (n_idx < 0))  # each device's parameters, its direction
        w = (gp.reshape(-1).index_select(0, idx) - self.g_ref) / self.s
        levels = []
        k, used = 1, 0
        while True:
            self._one_pulse(w, rows, None if xi is None else xi[used:used + w.numel()])
            used += w.numel()
            more = (m > k).nonzero().squeeze(1)
            if more.numel() == 0:
                break
            levels.append((w, more))
            w, m, rows = w.index_select(0, more), m.index_select(0, more), rows.index_select(0, more)
            k += 1
        for parent, more in reversed(levels):
            w = parent.index_copy_(0, more, w)
        return w.mul_(self.s).add_(self.g_ref)

    def _one_pulse(self, w: torch.Tensor, rows: torch.Tensor, xi: torch.Tensor | None) -> None:
        """One pulse on every device of ``w`` (normalised weights, updated in place) with its parameter rows
        (:meth:`_step_table`): the step of the model, its cycle-to-cycle noise (one normal of ``xi`` per device),
        then the clip to ``[b_min, b_max]``."""
        c = self.card
        b_min, b_max, step, slope, h, a_s, lo, hi = rows.unbind(1)
        sigma = c.dw_min_std
        if self.model == "exp_step":
            dw = torch.addcmul(step, a_s, torch.addcmul(h, slope, w).exp_(), value=-1.0).clamp_(lo, hi)
            if c.dw_min_std_add > 0 or c.dw_min_std_slope > 0:  # aihwkit's complex noise
                std = (dw.abs() + c.dw_min_std_add * c.w_range).add_(w.abs(), alpha=c.dw_min_std_slope)
                dw.addcmul_(std, xi, value=sigma)
            elif sigma > 0:
                dw.addcmul_(dw, xi, value=sigma)  # dw (1 + σ ξ)
        elif self.model == "constant_step":
            dw = step if sigma <= 0 else torch.addcmul(step, step, xi, value=sigma)
        else:  # linear_step, soft_bounds: k w + s, the noise on s only unless mult_noise
            dw = torch.addcmul(step, slope, w)
            if sigma > 0:
                dw.addcmul_(dw if c.mult_noise else step, xi, value=sigma)
        w.add_(dw).clamp_(b_min, b_max)

    # ------------------------------------------------------------------ deterministic traces
    def _deterministic(self) -> bool:
        c = self.card
        if self.model in STEP_MODELS:
            return c.dw_min_std == 0 and c.write_noise_std == 0
        return c.c2c_sigma == 0

    def _trace_closed(self, counts: torch.Tensor) -> torch.Tensor:
        """g after counts[k] pulses from the current state, counts of one sign, shape (K,) -> (K, *shape).
        Only for deterministic models with a closed form (NeuroSim, ideal, constant / linear / soft bounds)."""
        n = counts.to(torch.int64).reshape((-1,) + (1,) * len(self.shape)).expand((counts.numel(),) + self.shape)
        n = torch.where(self.stuck.expand_as(n), torch.zeros_like(n), n)
        gp = self._gp.expand_as(n)
        if self.model == "neurosim":
            return self._neurosim(gp, n, None)
        if self.model == "ideal":
            return self._ideal(gp, n, None)
        return self._step_closed(gp, n)


def pulse_response(card: DeviceCard, n_pulses_up: int, n_pulses_down: int, *, n_devices: int = 1,
                   generator: torch.Generator, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float64, g_start: str | float = "min",
                   return_array: bool = False):
    """Potentiation-then-depression curve: ``n_devices`` fresh devices (d2d sampled from ``generator``) start at
    ``g_start``, receive ``n_pulses_up`` single potentiation pulses, then ``n_pulses_down`` single depression pulses.
    Returns the conductance trace [S], shape ``(n_pulses_up + n_pulses_down + 1, n_devices)`` (row 0 = start), and
    with ``return_array=True`` also the :class:`DeviceArray` (for its per-device bounds)."""
    if n_pulses_up < 0 or n_pulses_down < 0 or n_devices < 1:
        raise ValueError("pulse counts must be >= 0 and n_devices >= 1")
    arr = DeviceArray(card, (n_devices,), generator=generator, device=device, dtype=dtype, g_init=g_start)
    rows = [arr.g.clone()]
    if arr._deterministic() and (arr.model in ("neurosim", "ideal") or arr._closed_form_ok()):
        if n_pulses_up:
            up = arr._trace_closed(torch.arange(1, n_pulses_up + 1, device=arr.device))
            rows.extend(up.unbind(0))
            arr.pulse_count += n_pulses_up
            arr._gp = up[-1].clone()
        if n_pulses_down:
            dn = arr._trace_closed(-torch.arange(1, n_pulses_down + 1, device=arr.device))
            rows.extend(dn.unbind(0))
            arr.pulse_count += n_pulses_down
            arr._gp = dn[-1].clone()
    else:
        one = torch.ones(n_devices, dtype=torch.int64, device=arr.device)
        for _ in range(n_pulses_up):
            arr.apply_pulses(one)
            rows.append(arr.g.clone())
        for _ in range(n_pulses_down):
            arr.apply_pulses(-one)
            rows.append(arr.g.clone())
    trace = torch.stack(rows)
    return (trace, arr) if return_array else trace
