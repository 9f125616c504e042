r"""Differential conductance pairs and their programming (pulses, counters, energy, refresh).

Weights
-------
A signed weight is held by two devices of the same card, ``G+`` and ``G-`` [S]:

.. math:: W = (G^+ - G^-)/g_0,

with the weight scale ``g0`` [S] (default: the card's nominal range ``g_max - g_min``, so that ``|W| <= 1`` is the
representable range of a nominal pair). One nominal pulse changes ``W`` by ``dw = dg_nominal / g0``.

Mapping weights -> conductances (:meth:`DifferentialArray.weights_to_conductances`):

* ``"min"`` (default): the device of the weight's sign carries the magnitude, the other one sits as low as possible
  (at its own ``g_min``)::

      W >= 0:  G- = max(g_min-, g_min+ - |W| g0),  G+ = G- + |W| g0      (and mirrored for W < 0)

  (the ``max`` only matters when device-to-device spread makes ``g_min+ > g_min-``). Why the default: it has the
  largest range (``|W| g0`` up to ``g_max - g_min`` with one device at its floor), the smallest read currents
  (energy, IR drop), it is the state a reset pair starts from (both at ``g_min``, ``W = 0``), it is what the
  unidirectional (potentiation-only, PCM) policy needs, and it is what :meth:`refresh` restores.
* ``"symmetric"``: both devices around the pair's common midpoint ``c = (g_min± + g_max±)/4`` (sum over the two
  devices): ``G± = c ± W g0 / 2``. Both devices then have head-room in both directions (useful for bidirectional
  devices with strongly state-dependent steps) at the price of twice the read current and half the range.

A weight is *representable* when both targets lie within their device's bounds; otherwise it is clipped (the
device carrying the magnitude is set to its bound) and counted in :meth:`representable_fraction`.

Programming policies (how a pulse request ``n`` in weight direction reaches the pair)
--------------------------------------------------------------------------------------
``n > 0`` asks for ``W`` to grow by ``n`` steps, ``n < 0`` to shrink.

* ``"unidirectional"`` (potentiation only, PCM style, Burr et al. 2015): ``n > 0`` potentiates ``G+`` by ``n``
  pulses, ``n < 0`` potentiates ``G-`` by ``|n|``. Devices never receive depression pulses (except in
  :meth:`refresh`); both climb towards ``g_max``, which is what :meth:`refresh` repairs.
* ``"bidirectional"`` (default; ReRAM, ECRAM): the device of the current weight's sign (``G+`` if
  ``G+ >= G-``) is the *active* device. An update in the weight's own direction potentiates the active device. An
  update against it first *depresses the active device*, by at most ``k = round(|G+ - G-| / dg_nominal)`` pulses
  (the weight reaches 0), and the remaining ``|n| - k`` pulses potentiate the other device: a sign change goes
  through zero via the device that carried the weight, and the other device starts from its floor. This keeps the
  pair in the ``"min"`` mapping. The split uses the programmed (not read) state of the pair, as a controller
  holding the sign of each weight would; it costs no read.

Each device receives pulses of a single direction per request (the split never both potentiates and depresses one
device), so each request is one :meth:`DeviceArray.apply_pulses` call per device array. When at most
``SPARSE_FRACTION`` (:mod:`neuromorph.devices.models`) of the pairs get pulses, the usual case of a small
stochastic-rounding update, a request works on the flat indices of the pulsed pairs only (split, counters, device
models via :meth:`DeviceArray.apply_pulses_at`, realised ``ΔW``), with the same results; the pulsed devices are then
written in place (the tiles cache ``G+ - G-`` keyed on the conductance tensors and their ``_version``). On the CPU
the scan for the pulsed pairs and their split run compiled (:mod:`neuromorph.devices.kernels`; the same integers).
:meth:`DifferentialArray.program_steps`, the training update, takes the request of the columns whose inputs are
not all 0 only (the others request nothing) and, compiled, rounds it and splits its pairs in one pass.

Pulse counts from update requests (:meth:`DifferentialArray.program`)
---------------------------------------------------------------------
* ``"stochastic_rounding"``: ``n = floor(ΔW/dw + u)``, ``u ~ U[0, 1)``: ``E[n] dw = ΔW`` (unbiased). When every
  request is below ``SPARSE_ROUNDING`` steps (``p = max |ΔW/dw|``; training updates on coarse devices are mostly
  far below one step), the same independent draws ``n_ij = sign · Bernoulli(|ΔW_ij/dw|)`` are sampled without a
  uniform per device: candidates form a Bernoulli(``p``) process over the flattened array (geometric gaps), each
  kept with probability ``|ΔW_ij/dw| / p`` (thinning): about ``2 p N`` random numbers instead of ``N``. A request
  of some columns only (:meth:`DifferentialArray.round_request` with ``cols``) draws its uniforms for those
  columns only; its thinned counts are those of the whole request.
* ``"deterministic"``: ``n = round(ΔW/dw)`` (half to even).
* ``"manhattan"``: sign only, one pulse per pair where ``|ΔW| > threshold``: ``n = sign(ΔW)``.
* :meth:`DifferentialArray.program_outer` (``"pulse_train"``): aihwkit's stochastic pulse trains, see its
  docstring.

On a device whose step equals ``dg_nominal`` (ideal, constant step, linear NeuroSim) the realised weight change is
then ``ΔW`` up to the rounding and the device noise; on a nonlinear device the pulse count is still unbiased but each
pulse moves ``G`` by the device's local step (that is the device non-ideality being simulated).

Counters and energy
-------------------
Per device of each pair: potentiation and depression pulses (int64 tensors, :meth:`pulses_per_device`); totals of
pulses, device reads, refreshes; energy ``E = energy_per_pulse · pulses + energy_per_read · reads`` [J] with the
card's ``pulse_energy`` (per pulse per device: ``energy_per_pulse``, or NeuroSim's ``V²·G·t`` estimate from the
card's write pulses) and ``energy_per_read`` (per device per read). Programming pulses
are counted when fired, including those that hit a bound or a stuck device; resets and :meth:`set_weights` use the
devices' cost model (nominal steps traversed, ``DeviceArray.set_conductance``). An array read of a batch of ``B``
inputs counts ``B`` reads of every device (both devices of each pair). :meth:`DifferentialArray.stats` returns them.
The per-device totals are the devices' own ``pulse_count``; the pair keeps the net (potentiation − depression) count
per device, accumulated in int32 parts folded into int64 (:class:`~neuromorph.devices.models.Tally`; the sparse
path's adds are kept and summed in one pass when read, or when they reach the array's size); programming pulses
are the totals less the set and refresh pulses (counted per request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import DeviceArray, DeviceCard
from ..devices import kernels as _kernels
from ..devices import models as _models

__all__ = ["DifferentialArray", "PulseTrainParams", "pulse_train_scales", "MAPPINGS", "POLICIES", "PROGRAM_MODES"]

MAPPINGS = ("min", "symmetric")
POLICIES = ("bidirectional", "unidirectional")
PROGRAM_MODES = ("stochastic_rounding", "deterministic", "manhattan")
SPARSE_ROUNDING = 0.25
"""Stochastic rounding samples only the pulsed devices when every request is below this many steps."""
_COUNT_DTYPES = (torch.int32, torch.int64)
_GAP_MARGIN = 6.0  # candidate draws per chunk: mean + _GAP_MARGIN standard deviations (more chunks if short)


def _peak(req: torch.Tensor) -> float:
    """``max |req|`` (one pass)."""
    lo, hi = torch.aminmax(req)
    return max(-float(lo), float(hi))


def _sparse_stochastic_rounding(req: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Stochastic rounding of requests with ``|req| <= p < 1`` (module docstring): int32 counts in ``{-1, 0, 1}``,
    ``P(n_ij = sign(req_ij)) = |req_ij|``, independent across devices, from about ``2 p N`` random numbers."""
    flat = req.reshape(-1)
    N = flat.numel()
    n = torch.zeros(N, dtype=torch.int32, device=req.device)
    if p <= 0.0:
        return n.view(req.shape)
    log_q = math.log1p(-p)
    mean = N * p
    chunks, last = [], -1
    while last < N - 1:  # geometric gaps P(g = k) = (1 - p)^(k-1) p, k >= 1: a Bernoulli(p) process's successes
        m = max(int(mean + _GAP_MARGIN * math.sqrt(mean)), 0) + 16
        v = 1.0 - torch.rand(m, generator=gen, dtype=torch.float64, device=gen.device)  # in (0, 1]
        pos = torch.floor(torch.log(v) / log_q).to(torch.int64).add_(1).cumsum_(0).add_(last).to(req.device)
        chunks.append(pos[pos < N])
        last = int(pos[-1])
        mean = max((N - 1 - last) * p, 0.0)
    cand = torch.cat(chunks)
    r = flat.index_select(0, cand)
    keep = torch.rand(cand.numel(), generator=gen, dtype=torch.float64, device=gen.device).to(req.device) * p \
        < r.abs().to(torch.float64)
    idx = cand[keep]
    n.index_copy_(0, idx, torch.sign(r[keep]).to(torch.int32))
    return n.view(req.shape)


@dataclass(frozen=True)
class PulseTrainParams:
    r"""aihwkit's ``PulsedUpdateMetaParameter`` / ``UpdateParameters`` (stochastic compressed pulse trains).

    ``desired_bl`` (``BL``, maximal train length), ``fixed_bl``, ``update_management`` (UM),
    ``update_bl_management`` (UBLM; turns UM on, as in aihwkit). With ``dw`` the weight change of one pulse
    (aihwkit's ``dw_min``, the weight granularity) and learning rate ``lr``, per sample (rpucuda
    ``PulsedUpdateMetaParameter::calculateBlAB`` / ``performUpdateManagement``)::

        fixed_bl or UBLM:  BL = desired_bl,  A = B = sqrt(lr / (dw BL))
        otherwise:         if dw desired_bl < lr: A = B = 1, BL = ceil(lr / dw)  else as above
        UBLM:              BL = min(ceil(lr x_max d_max / dw), desired_bl),  A = B = sqrt(lr / (dw BL))
        UM:                A *= sqrt(x_max / d_max),  B *= sqrt(d_max / x_max)

    (``x_max``, ``d_max``: the largest ``|x|``, ``|d|`` of the sample, floored at ``dw^2``). Each ``x_j`` fires a
    Bernoulli bit train of length ``BL`` with probability ``min(B |x_j|, 1)``, each ``d_i`` with
    ``min(A |d_i|, 1)`` (rpucuda ``SparseBitLineMaker``: ``x`` uses ``B``, ``d`` uses ``A``); every coincidence is
    one pulse on device ``(i, j)`` in the direction ``sign(x_j d_i)``, so ``E[n_ij] dw = lr x_j d_i`` while the
    probabilities are below 1.
    """

    desired_bl: int = 31
    fixed_bl: bool = True
    update_management: bool = True
    update_bl_management: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.desired_bl, bool) or not isinstance(self.desired_bl, int) or self.desired_bl < 1:
            raise ValueError(f"desired_bl = {self.desired_bl!r}: an integer >= 1 (pulse-train length) is required")


def pulse_train_scales(x_max: torch.Tensor, d_max: torch.Tensor, lr: float, dw: float,
                       params: PulseTrainParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample train length ``BL`` and probability scales ``A`` (for ``d``) and ``B`` (for ``x``) of aihwkit's
    update management (:class:`PulseTrainParams`); ``x_max``, ``d_max``: (batch,) largest ``|x|``, ``|d|``;
    ``dw``: weight change per pulse (weight granularity); ``lr > 0``. Returns float64 tensors (batch,)."""
    p = params
    x_max = torch.as_tensor(x_max, dtype=torch.float64)
    d_max = torch.as_tensor(d_max, dtype=torch.float64, device=x_max.device)
    nb = x_max.shape[0]
    reg = dw * dw
    x_max = x_max.clamp(min=reg)
    d_max = d_max.clamp(min=reg)
    ones = torch.ones(nb, dtype=torch.float64, device=x_max.device)
    if p.update_bl_management:
        bl = torch.ceil(lr * x_max * d_max / dw).clamp(min=1, max=p.desired_bl)
        a = torch.sqrt(lr / (dw * bl))
    elif p.fixed_bl or dw * p.desired_bl >= lr:
        bl = ones * p.desired_bl
        a = torch.sqrt(lr / (dw * bl))
    else:  # aihwkit: A = B = 1, BL = ceil(lr / dw)
        bl = ones * max(math.ceil(lr / dw), 1)
        a = ones.clone()
    b = a.clone()
    if p.update_management or p.update_bl_management:
        a = a * torch.sqrt(x_max / d_max)
        b = b * torch.sqrt(d_max / x_max)
    return bl, a, b


def _int_total(t: torch.Tensor) -> int:
    return int(t.sum().item())


class DifferentialArray:
    """Signed weights of shape ``shape = (out, in)`` as pairs of devices (see the module docstring).

    Parameters: ``card`` (:class:`~neuromorph.devices.DeviceCard`); ``shape``; ``generator`` (seeded; device
    sampling, stochastic rounding, pulse trains, read noise); ``g0`` [S] (default the card's range);
    ``mapping`` ("min" | "symmetric"); ``policy`` ("bidirectional" | "unidirectional"); ``device``, ``dtype``;
    ``weights`` (initial weights, placed without counting pulses; default: both devices at ``g_min``, or the
    symmetric midpoint).

    Attributes: ``pos``, ``neg`` (the two :class:`~neuromorph.devices.DeviceArray`), ``g0`` [S], ``dw`` (weight
    change of one nominal pulse).
    """

    def __init__(self, card: DeviceCard, shape: int | tuple[int, ...], *, generator: torch.Generator,
                 g0: float | None = None, mapping: str = "min", policy: str = "bidirectional",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 weights: torch.Tensor | None = None) -> None:
        if not isinstance(card, DeviceCard):
            raise TypeError(f"card must be a DeviceCard (see neuromorph.devices.load_card), not {type(card).__name__}")
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping = {mapping!r}: allowed mappings are {', '.join(MAPPINGS)}")
        if policy not in POLICIES:
            raise ValueError(f"policy = {policy!r}: allowed policies are {', '.join(POLICIES)}")
        shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        if not shape_t or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape_t):
            raise ValueError(f"shape = {shape!r}: positive integer sizes are required")
        if g0 is None:
            g0 = card.g_range
        if isinstance(g0, bool) or not isinstance(g0, int | float) or not math.isfinite(g0) or g0 <= 0:
            raise ValueError(f"g0 = {g0!r} S: the weight scale must be a finite conductance > 0 S")
        self.card = card
        self.shape = torch.Size(shape_t)
        self.g0 = float(g0)
        self.mapping = mapping
        self.policy = policy
        self.generator = generator
        self.listeners: list = []
        """Called as ``f(idx, versions)`` after a sparse request wrote the pairs ``idx`` (flat) in place; ``versions``
        are the ``_version`` of ``(pos.g, neg.g)`` before the writes."""
        self.dg = float(card.dg_nominal)
        if not self.dg > 0:
            raise ValueError(f"card '{card.name}': nominal step dg_nominal = {self.dg!r} S must be > 0")
        self.dw = self.dg / self.g0
        init = "center" if mapping == "symmetric" else "min"
        self.pos = DeviceArray(card, shape_t, generator=generator, device=device, dtype=dtype, g_init=init)
        self.neg = DeviceArray(card, shape_t, generator=generator, device=device, dtype=dtype, g_init=init)
        self.device = self.pos.device
        self.dtype = dtype
        # per device: the total pulses are the devices' own pulse_count; here the net (potentiation - depression):
        # up = (total + net)/2, down = (total - net)/2
        self._net = {k: _models.Tally(self.shape, self.device) for k in ("pos", "neg")}
        self._n = {"pulses_refresh": 0, "pulses_set": 0, "reads": 0, "reads_refresh": 0,
                   "refreshes": 0, "refresh_calls": 0, "updates": 0}
        self.last_representable_fraction = 1.0
        if weights is not None:
            self.set_weights(weights, count=False)
        elif mapping == "symmetric":
            self.set_weights(torch.zeros(self.shape, dtype=dtype, device=self.device), count=False)

    # ------------------------------------------------------------------ conversions
    @property
    def numel(self) -> int:
        return self.shape.numel()

    def _check_w(self, w, name: str = "W") -> torch.Tensor:
        w = torch.as_tensor(w, device=self.device)
        if not w.is_floating_point():
            w = w.to(self.dtype)
        if w.shape != self.shape:
            raise ValueError(f"{name} has shape {tuple(w.shape)}, the array has shape {tuple(self.shape)}")
        lo, hi = torch.aminmax(w)  # NaN propagates: one pass instead of isfinite().all()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains non-finite values")
        return w.to(self.dtype)

    def weights_to_conductances(self, w: torch.Tensor, *, return_mask: bool = False):
        """Targets ``(g_pos, g_neg)`` [S] for weights ``w`` (module docstring: mapping), clipped to each device's
        bounds; with ``return_mask=True`` also the boolean mask of representable weights."""
        w = self._check_w(w)
        pmin, pmax, nmin, nmax = self.pos.g_min, self.pos.g_max, self.neg.g_min, self.neg.g_max
        tol = 1e-9 * self.card.g_max
        if self.mapping == "min":
            mag = w.abs() * self.g0
            posw = w >= 0
            a_min = torch.where(posw, pmin, nmin)
            a_max = torch.where(posw, pmax, nmax)
            b_min = torch.where(posw, nmin, pmin)
            b_max = torch.where(posw, nmax, pmax)
            gb = torch.maximum(b_min, a_min - mag)
            ga = gb + mag
            ok = (ga <= a_max + tol) & (gb <= b_max + tol)
            ga = torch.minimum(ga, a_max)
            gb = torch.minimum(gb, b_max)
            gp = torch.where(posw, ga, gb)
            gn = torch.where(posw, gb, ga)
        else:
            c = 0.25 * (pmin + pmax + nmin + nmax)
            half = 0.5 * w * self.g0
            gp, gn = c + half, c - half
            ok = (gp >= pmin - tol) & (gp <= pmax + tol) & (gn >= nmin - tol) & (gn <= nmax + tol)
            gp = torch.minimum(torch.maximum(gp, pmin), pmax)
            gn = torch.minimum(torch.maximum(gn, nmin), nmax)
        return (gp, gn, ok) if return_mask else (gp, gn)

    def conductances_to_weights(self, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
        """``W = (g_pos - g_neg) / g0``."""
        g_pos, g_neg = torch.as_tensor(g_pos), torch.as_tensor(g_neg)
        if g_pos.shape != g_neg.shape:
            raise ValueError(f"g_pos {tuple(g_pos.shape)} and g_neg {tuple(g_neg.shape)} must have the same shape")
        if bool((g_pos < 0).any()) or bool((g_neg < 0).any()):
            bad = float(torch.minimum(g_pos.min(), g_neg.min()))
            raise ValueError(f"negative conductance {bad:g} S: conductances must be >= 0 S")
        return (g_pos - g_neg) / self.g0

    def representable_fraction(self, w: torch.Tensor) -> float:
        """Fraction of the weights ``w`` that the pairs can hold without clipping (per-device bounds)."""
        return float(self.weights_to_conductances(w, return_mask=True)[2].to(torch.float64).mean())

    def weights(self) -> torch.Tensor:
        """The programmed weights ``(G+ - G-)/g0`` (no read noise, no drift; no read counted)."""
        return (self.pos.g - self.neg.g) / self.g0

    def read(self, t: float | None = None, *, n_reads: int = 1, noise: bool = True) -> tuple[torch.Tensor, ...]:
        """Read both devices (``DeviceArray.read``: read noise, drift at time ``t`` [s], stuck devices) and count
        ``n_reads`` reads of every device (e.g. the batch size of an array operation). ``noise=False`` returns the
        programmed conductances (still counted). Returns ``(g_pos, g_neg)`` [S]."""
        self._n["reads"] += 2 * self.numel * int(n_reads)
        if noise:
            return self.pos.read(t, generator=self.generator), self.neg.read(t, generator=self.generator)
        return self.pos.g, self.neg.g

    def state_dict(self) -> dict:
        """Both devices' states (:meth:`DeviceArray.state_dict`) and the pair array's counters."""
        return {"pos": self.pos.state_dict(), "neg": self.neg.state_dict(), "n": dict(self._n),
                "net": {k: t.value for k, t in self._net.items()},
                "representable": self.last_representable_fraction}

    def load_state_dict(self, state: dict, where: str = "array") -> None:
        self.pos.load_state_dict(state["pos"], f"{where} (G+)")
        self.neg.load_state_dict(state["neg"], f"{where} (G-)")
        if set(state["n"]) != set(self._n):
            raise ValueError(f"{where}: saved counters {sorted(state['n'])}, expected {sorted(self._n)}")
        self._n = {k: int(v) for k, v in state["n"].items()}
        for k, t in self._net.items():
            t.value = state["net"][k].to(self.device).clone()
        self.last_representable_fraction = float(state["representable"])

    def reads_exact(self, t: float | None = None, *, noise: bool = True) -> bool:
        """Whether :meth:`read` at ``t`` (with ``noise``) returns the programmed tensors ``(pos.g, neg.g)``
        themselves (``DeviceArray.read_is_exact``); such reads may be replaced by :meth:`count_exact_read`."""
        return not noise or (self.pos.read_is_exact(t) and self.neg.read_is_exact(t))

    def count_exact_read(self, n_reads: int, *, noise: bool = True) -> None:
        """The counters of one :meth:`read` (``n_reads`` reads of every device) that :meth:`reads_exact` says
        returns the programmed tensors, without reading them."""
        self._n["reads"] += 2 * self.numel * int(n_reads)
        if noise:
            self.pos.read_count += 1
            self.neg.read_count += 1

    def set_weights(self, w: torch.Tensor, *, count: bool = True) -> float:
        """Program both devices directly to the targets of ``w`` (``DeviceArray.set_conductance``; the pulses are
        the devices' cost model, nominal steps traversed, counted as ``pulses_set`` unless ``count=False``).
        Returns the representable fraction (also in ``stats()['representable_fraction']``)."""
        gp, gn, ok = self.weights_to_conductances(w, return_mask=True)
        for dev, tgt, key in ((self.pos, gp, "pos"), (self.neg, gn, "neg")):
            before_g, before_n = dev.g.clone(), dev.pulse_count.clone()
            dev.set_conductance(tgt, count_pulses=count)
            dn = dev.pulse_count - before_n
            if count:
                self._n["pulses_set"] += self._count(key, torch.where(dev.g >= before_g, dn, -dn))
        self.last_representable_fraction = float(ok.to(torch.float64).mean())
        return self.last_representable_fraction

    # ------------------------------------------------------------------ programming
    def _split(self, n: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed pulse counts in weight direction -> signed counts for (G+, G-) (module docstring: policies).
        ``n``: counts of the whole array, or with ``idx`` (flat indices) the counts of those pairs only.

        Bidirectional: with ``d = G+ - G-``, ``k = min(|n|, round(|d|/dg))`` if ``n`` opposes the sign of ``d``
        (else 0); ``G+`` gets ``|n| - k`` if ``n > 0`` else ``-k``; ``G-`` gets ``|n| - k`` if ``n < 0`` else ``-k``.
        """
        if self.policy == "unidirectional":
            return n.clamp(min=0), (-n).clamp_(min=0)
        # written without boolean masks (torch.where and masked_fill_ cost 20x an arithmetic pass on some CPU builds):
        # with r = round((G- - G+)/dg), k = min(max(r sign(n), 0), |n|); G+ gets relu(n) - k, G- gets relu(-n) - k,
        # which is (relu(n) - k) - n; the counts keep their integer dtype
        if idx is None:
            r = self.neg.g - self.pos.g
        else:
            r = self.neg.g.reshape(-1).index_select(0, idx) - self.pos.g.reshape(-1).index_select(0, idx)
        nf = n.to(r.dtype)
        k = torch.minimum(r.div_(self.dg).round_().mul_(nf.sign()).clamp_(min=0), nf.abs())
        n_pos = nf.clamp_(min=0).sub_(k).to(n.dtype)
        return n_pos, n_pos - n

    def _count(self, key: str, n: torch.Tensor) -> int:
        """Add signed pulse counts ``n`` of device array ``key`` ("pos" | "neg") to its net counter; returns Σ|n|.
        The totals are counted by the device as it receives the pulses."""
        self._net[key].add(n)
        return _int_total(n.abs())

    def _fire(self, n_pos: torch.Tensor, n_neg: torch.Tensor, kind: str, realised: bool = True,
              bound: int | None = None) -> torch.Tensor | None:
        """Apply signed pulse counts to the two devices, count them (``bound``: a bound of every count, if known);
        returns the realised ΔW (``realised=False``: ``None``, not computed)."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device) if realised else None
        for dev, n, key, sign in ((self.pos, n_pos, "pos", 1.0), (self.neg, n_neg, "neg", -1.0)):
            n = dev._as_counts(n)
            a = n.abs()
            self._net[key].add(n, bound)
            if kind != "pulses_program":  # programming pulses are the rest of the devices' totals (stats)
                self._n[kind] += _int_total(a)
            dg = dev._apply_counts(n, a, None, realised, bound)
            if realised:
                out.add_(dg, alpha=sign / self.g0)
        return out

    def _device_lists(self, idx: torch.Tensor, n_pos: torch.Tensor, n_neg: torch.Tensor) -> tuple[tuple, tuple]:
        """Per device array, from the pairs ``idx`` and their split counts: the flat indices of the devices that get
        pulses, their int64 counts and their positions in ``idx`` (mostly one device per pair)."""
        out = []
        for n in (n_pos, n_neg):
            j = n.nonzero().squeeze(1)
            out.append((idx.index_select(0, j), n.index_select(0, j).to(torch.int64), j))  # the counters' dtype
        return out[0], out[1]

    def _fire_at(self, idx: torch.Tensor, lists: tuple[tuple, tuple], kind: str,
                 realised: bool = True) -> torch.Tensor | None:
        """:meth:`_fire` for the pairs at flat indices ``idx`` only (every other pair gets no pulse), given each
        device array's share (:meth:`_device_lists`); returns the realised ΔW at ``idx`` (``realised=False``:
        ``None``, not computed)."""
        out = torch.zeros(idx.shape, dtype=self.dtype, device=self.device) if realised else None
        for dev, (at, n, j), key, sign in ((self.pos, lists[0], "pos", 1.0), (self.neg, lists[1], "neg", -1.0)):
            if at.numel() == 0:
                continue
            self._net[key].add_at(at, n)
            if kind != "pulses_program":  # programming pulses are the rest of the devices' totals (stats)
                self._n[kind] += _int_total(n.abs())
            dg = dev.apply_pulses_at(at, n, delta=realised)
            if realised:  # added as the dense path adds it (the same bits)
                out.add_(torch.zeros_like(out).index_copy_(0, j, dg), alpha=sign / self.g0)
        return out

    def _request(self, n: torch.Tensor, kind: str = "pulses_program", realised: bool = True,
                 found: tuple | None = None) -> torch.Tensor | None:
        """Fire one request of signed pulse counts ``n`` (weight direction, shape of the array) through the pair
        policy; returns the realised ΔW. When at most ``SPARSE_FRACTION`` of the pairs get pulses (the usual
        training update), everything after one ``nonzero`` works on those pairs only: the split (it needs
        ``G+ - G-`` there only), the counters, the device models (``apply_pulses_at``) and the realised ΔW
        (scattered into zeros); on the CPU with the compiled kernels (:mod:`~neuromorph.devices.kernels`) one scan of
        the counts finds the pairs and splits them (the same integers). Otherwise the dense path: the same results.
        ``realised=False``: the realised ΔW is not built, ``None`` is returned. ``found``: ``(split,)`` where the
        caller has the split of ``n`` already (:func:`~neuromorph.devices.kernels.round_split`)."""
        n = n if n.dtype in _COUNT_DTYPES else n.to(torch.int64)
        flat = n.reshape(-1)
        max_pairs = _models.SPARSE_FRACTION * self.numel
        if found is not None:
            found = found[0]
        elif flat.dtype == torch.int32 and self.device.type == "cpu" and _kernels.available():
            found = _kernels.split(flat.contiguous(), self.pos.g.contiguous(), self.neg.g.contiguous(), self.dg,
                                   self.policy == "bidirectional", math.floor(max_pairs))
        elif int(flat.count_nonzero()) <= max_pairs:  # cheap on integers (no nonzero() when dense)
            idx = flat.nonzero().squeeze(1)
            found = (idx, *self._device_lists(idx, *self._split(flat.index_select(0, idx), idx)))
        if found is None:  # the dense path
            lo, hi = torch.aminmax(flat)  # every count of either device is at most max|n| (see _split)
            n_pos, n_neg = self._split(n)
            return self._fire(n_pos, n_neg, kind, realised, bound=max(-int(lo), int(hi)))
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device) if realised else None
        if found[0].numel():
            idx = found[0]
            versions = (self.pos.g._version, self.neg.g._version)
            dw = self._fire_at(idx, found[1:], kind, realised)
            if realised:
                out.view(-1).index_copy_(0, idx, dw)
            for listener in self.listeners:  # e.g. a tile patching what it derives from the conductances
                listener(idx, versions)
        return out

    def apply_weight_pulses(self, n: torch.Tensor, *, realised: bool = True) -> torch.Tensor | None:
        """Fire signed pulse counts ``n`` in weight direction (``+1`` = one nominal step ``+dw``) through the pair
        policy. Returns the realised ``ΔW`` (weight units); ``realised=False``: ``None`` (no dense tensor of the
        changes is built)."""
        n = torch.as_tensor(n, device=self.device)
        if n.shape != self.shape:
            raise ValueError(f"pulse counts have shape {tuple(n.shape)}, the array has shape {tuple(self.shape)}")
        if n.is_floating_point():
            if not torch.equal(n, torch.round(n)):
                raise ValueError("pulse counts must be integers")
        self._n["updates"] += 1
        return self._request(n if n.dtype in _COUNT_DTYPES else n.to(torch.int64), realised=realised)

    def pulse_counts(self, delta_w: torch.Tensor, *, mode: str = "stochastic_rounding", threshold: float = 0.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Signed pulse counts (weight direction) for the request ``delta_w`` (module docstring); nothing fired."""
        if mode not in PROGRAM_MODES:
            allowed = ", ".join(PROGRAM_MODES)
            raise ValueError(f"mode = {mode!r}: allowed modes are {allowed} (and program_outer for 'pulse_train')")
        if mode == "manhattan" and not threshold >= 0:
            raise ValueError(f"threshold = {threshold!r}: must be >= 0 (weight units)")
        dw = self._check_w(delta_w, "delta_W")
        n = self.round_request(dw / self.dw, mode=mode, threshold=threshold / self.dw, generator=generator)
        return n.to(torch.int64)

    def round_request(self, req: torch.Tensor, *, mode: str = "stochastic_rounding", threshold: float = 0.0,
                      generator: torch.Generator | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`pulse_counts` of a checked request ``req`` given in nominal steps (``ΔW / dw``, shape of the
        array, finite; ``threshold`` in steps too); ``req`` may be overwritten. With ``cols`` (ascending column
        indices of a 2-D array) ``req`` is the request of those columns only, the others requesting nothing (0
        pulses in every mode), and the counts of those columns are returned: the deterministic, Manhattan and
        thinned (``<= SPARSE_ROUNDING``) counts are those of the whole request; above ``SPARSE_ROUNDING`` one
        uniform is drawn per element of ``req`` (the skipped columns need none), so the draws, not their
        distribution, depend on the columns. Returns integer counts: int32 (half the memory traffic of int64 in
        the update loop) unless a request reaches 2^31 steps."""
        if mode == "manhattan":
            return torch.where(req.abs() > threshold, torch.sign(req), 0).to(torch.int32)
        p = _peak(req)
        dtype = torch.int32 if p < 2.0 ** 31 - 2 else torch.int64
        if mode == "deterministic":
            return torch.round(req).to(dtype)
        gen = generator or self.generator
        if p <= SPARSE_ROUNDING:
            if cols is None:
                return _sparse_stochastic_rounding(req, p, gen)
            full = torch.zeros(self.shape, dtype=req.dtype, device=req.device).index_copy_(1, cols, req)
            return _sparse_stochastic_rounding(full, p, gen).index_select(1, cols)
        u = self._uniforms(req, gen)
        # floor(req + u) = floor(req) + 1 with probability frac(req): stochastic rounding in two passes. The sum
        # rounds to the float grid at |req + u|, so the probability is exact to 2^-24·max(1, |req|) in float32
        return req.add_(u).floor_().to(dtype)

    def _uniforms(self, req: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Stochastic rounding's uniforms in [0, 1), one per element of ``req``, from the generator ``gen``."""
        return torch.rand(req.shape, generator=gen, dtype=req.dtype, device=gen.device).to(self.device)

    def program_steps(self, req: torch.Tensor, *, cols: torch.Tensor | None = None,
                      mode: str = "stochastic_rounding", threshold: float = 0.0,
                      realised: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Round the request ``req`` (nominal steps; with ``cols``, of those columns only: :meth:`round_request`)
        and fire it through the pair policy: the training update's programming. Returns the counts (the array's
        shape, weight direction) and the realised ΔW (``realised=False``: ``None``). On the CPU with the compiled
        kernels, stochastic rounding above ``SPARSE_ROUNDING`` steps, the pairs' split and the scan for the pulsed
        pairs are one pass (:func:`~neuromorph.devices.kernels.round_split`, with the uniforms
        :meth:`round_request` draws): the same counts, the same result."""
        self._n["updates"] += 1
        req = req.contiguous()
        if mode == "stochastic_rounding" and len(self.shape) == 2 and self.device.type == "cpu" \
                and _kernels.available():
            if SPARSE_ROUNDING < _peak(req) < 2.0 ** 31 - 2:
                n = torch.zeros(self.shape, dtype=torch.int32)
                u = self._uniforms(req, self.generator)  # the draw round_request makes
                found = _kernels.round_split(req, u, cols, self.shape[1], n,
                                             self.pos.g.contiguous(), self.neg.g.contiguous(), self.dg,
                                             self.policy == "bidirectional",
                                             math.floor(_models.SPARSE_FRACTION * self.numel))
                return n, self._request(n, realised=realised, found=(found,))
        n = self.round_request(req, mode=mode, threshold=threshold, cols=cols)
        if cols is not None:
            n = torch.zeros(self.shape, dtype=n.dtype, device=n.device).index_copy_(1, cols, n)
        return n, self._request(n, realised=realised)

    def program(self, delta_w: torch.Tensor, *, mode: str = "stochastic_rounding", threshold: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Turn the update request ``delta_w`` [weight units] into pulses (``mode``: "stochastic_rounding",
        "deterministic", "manhattan" with ``threshold``) and fire them through the pair policy. Returns the
        realised ``ΔW`` (from the devices' programmed conductances)."""
        n = self.pulse_counts(delta_w, mode=mode, threshold=threshold, generator=generator)
        self._n["updates"] += 1
        return self._request(n)

    def pulse_train_counts(self, x: torch.Tensor, d: torch.Tensor, lr: float, *,
                           params: PulseTrainParams | None = None,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coincidence counts ``(n_up, n_down)`` (>= 0, shape ``(out, in)``) of aihwkit-style stochastic pulse
        trains for ``ΔW = lr Σ_b d_b x_bᵀ`` (see :class:`PulseTrainParams`); vectorised over the batch, the train
        and the devices. Nothing is fired."""
        p = params or PulseTrainParams()
        x = torch.as_tensor(x, device=self.device)
        d = torch.as_tensor(d, device=self.device)
        x = x.unsqueeze(0) if x.dim() == 1 else x
        d = d.unsqueeze(0) if d.dim() == 1 else d
        out_f, in_f = self.shape[0], self.shape[-1]
        if len(self.shape) != 2:
            raise ValueError("pulse trains need a 2-D array (out, in)")
        if x.dim() != 2 or x.shape[1] != in_f:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, {in_f}) or ({in_f},)")
        if d.dim() != 2 or d.shape[1] != out_f:
            raise ValueError(f"d has shape {tuple(d.shape)}: expected (batch, {out_f}) or ({out_f},)")
        if x.shape[0] != d.shape[0]:
            raise ValueError(f"x and d batch sizes differ: {x.shape[0]} vs {d.shape[0]}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr = {lr!r}: a finite learning rate >= 0 is required")
        zero = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        if lr == 0:
            return zero, zero.clone()
        x = x.to(torch.float64)
        d = d.to(torch.float64)
        bl, a, b = pulse_train_scales(x.abs().amax(1), d.abs().amax(1), lr, self.dw, p)
        bl_max = int(bl.max().item())
        gen = generator or self.generator
        f32 = torch.float32
        live = (torch.arange(bl_max, device=self.device)[None, :] < bl[:, None]).to(f32)  # (B, BL)
        px = (b[:, None] * x.abs()).to(f32)[:, None, :] * live[:, :, None]  # (B, BL, in)
        pd = (a[:, None] * d.abs()).to(f32)[:, None, :] * live[:, :, None]  # (B, BL, out)

        def bits(prob: torch.Tensor) -> torch.Tensor:
            u = torch.rand(prob.shape, generator=gen, dtype=f32, device=gen.device).to(self.device)
            return (u < prob).to(f32)

        xb, db = bits(px), bits(pd)
        xs = (xb * torch.sign(x).to(f32)[:, None, :]).reshape(-1, in_f)
        ds = (db * torch.sign(d).to(f32)[:, None, :]).reshape(-1, out_f)
        # coincidences: total = Σ d-bit x-bit, net = Σ sign(d) d-bit sign(x) x-bit (exact in float32 below 2^24)
        total = torch.round(db.reshape(-1, out_f).T @ xb.reshape(-1, in_f)).to(torch.int64)
        net = torch.round(ds.T @ xs).to(torch.int64)
        return (total + net) // 2, (total - net) // 2

    def program_outer(self, x: torch.Tensor, d: torch.Tensor, lr: float, *, params: PulseTrainParams | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """aihwkit-style stochastic pulse-train update for ``ΔW = lr Σ_b d_b x_bᵀ`` (``x``: (B, in) or (in,),
        ``d``: (B, out) or (out,)). Sign convention: the *requested* change is ``+lr d xᵀ`` (aihwkit's
        ``tile.update(x, d)`` applies ``-lr d xᵀ`` with ``d`` the output gradient: pass ``d = -δ`` for descent).
        The coincidences in the increasing direction are fired first, then the decreasing ones (within one sample
        all pulses of a device have one sign; across the samples of a batch they are grouped by sign). Returns the
        realised ``ΔW``."""
        n_up, n_down = self.pulse_train_counts(x, d, lr, params=params, generator=generator)
        return self.fire_coincidences(n_up, n_down)

    def fire_coincidences(self, n_up: torch.Tensor, n_down: torch.Tensor) -> torch.Tensor:
        """Fire coincidence counts ``(n_up, n_down)`` (>= 0, from :meth:`pulse_train_counts`) as
        :meth:`program_outer` does; returns the realised ``ΔW``. Lets two arrays receive the same trains."""
        if n_up.shape != self.shape or n_down.shape != self.shape:
            raise ValueError(f"coincidence counts have shapes {tuple(n_up.shape)}, {tuple(n_down.shape)}; the array "
                             f"has shape {tuple(self.shape)}")
        self._n["updates"] += 1
        # mixed: some device has pulses of both signs (n_up > 0 and n_down > 0)
        mixed = bool(torch.minimum(n_up, n_down).max() > 0)
        if not mixed:  # always so for one sample: one request with the same pulses
            return self._request(n_up - n_down)
        return self._request(n_up) + self._request(-n_down)

    # ------------------------------------------------------------------ refresh
    def refresh(self, threshold: float, *, max_verify: int = 30, t: float | None = None) -> int:
        """Refresh saturated pairs (read, reset both, reprogram the difference); returns the number refreshed.

        1. Read every pair (one counted read of every device). A pair is *saturated* when its higher device reads
           within ``threshold · (g_max - g_min)`` of the card's ``g_max`` while its lower device reads more than
           ``threshold · (g_max - g_min)`` above ``g_min`` (resetting then frees head-room; a pair holding a maximal
           weight with one device at its floor is left alone).
        2. Target ``W_t = (G+ - G-)/g0`` of that read.
        3. Reset both devices of the saturated pairs to their ``g_min`` (``DeviceArray.reset(mask=...)``; the
           pulses are the devices' cost model, nominal steps traversed, counted as depression pulses).
        4. Write-verify ``W_t`` into the device of its sign (the other stays at its floor): each round reads the
           pair, estimates the device's local step ``s`` (starting at ``dg_nominal``, then the measured change per
           pulse of the previous round) and fires ``n = round(ΔG/s)`` pulses for the remaining change ``ΔG`` [S]
           (bidirectional policy), or ``floor(ΔG/s) >= 0`` (unidirectional: potentiation only, approach from
           below). The first round fires at most one pulse (a probe of the local step: a device whose first steps
           are larger than nominal must not overshoot). A pair is done when no pulse is needed; at most
           ``max_verify`` rounds. On a noise-free device the result is within one local step of ``W_t``.

        Vectorised over pairs (the loop is over verify rounds). Counted: reads (also in ``reads_refresh``), reset
        and write pulses (``pulses_refresh``), their energy (``energy_refresh_J``), ``refreshes`` (pairs) and
        ``refresh_calls``. ``t``: read time for drifting devices [s]."""
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 0.5:
            raise ValueError(f"threshold = {threshold!r}: a fraction of the conductance range in (0, 0.5) is required")
        if isinstance(max_verify, bool) or not isinstance(max_verify, int) or max_verify < 1:
            raise ValueError(f"max_verify = {max_verify!r}: an integer >= 1 is required")
        c = self.card
        self._n["refresh_calls"] += 1
        reads0 = self._n["reads"]
        gp_r, gn_r = self.read(t)
        band = threshold * c.g_range
        hi, lo = torch.maximum(gp_r, gn_r), torch.minimum(gp_r, gn_r)
        sat = (hi >= c.g_max - band) & (lo > c.g_min + band)
        n_sat = _int_total(sat)
        if n_sat == 0:
            self._n["reads_refresh"] += self._n["reads"] - reads0
            return 0
        w_t = (gp_r - gn_r) / self.g0
        on_pos = w_t >= 0
        sgn = torch.where(on_pos, 1.0, -1.0).to(self.dtype)
        for dev, key in ((self.pos, "pos"), (self.neg, "neg")):
            before_n = dev.pulse_count.clone()
            dev.reset(to="min", mask=sat)
            dn = torch.where(sat, dev.pulse_count - before_n, 0)
            self._n["pulses_refresh"] += self._count(key, -dn)
        todo = sat.clone()
        step = torch.full(self.shape, self.dg, dtype=self.dtype, device=self.device)
        last_n: torch.Tensor | None = None
        last_g: torch.Tensor | None = None
        for rnd in range(max_verify):
            n_pairs = _int_total(todo)
            if n_pairs == 0:
                break
            self._n["reads"] += 2 * n_pairs
            gp_v, gn_v = self.pos.read(t, generator=self.generator), self.neg.read(t, generator=self.generator)
            g_act = torch.where(on_pos, gp_v, gn_v)
            if last_n is not None and last_g is not None:
                moved = (g_act - last_g) * torch.sign(last_n).to(self.dtype)
                ok = (last_n != 0) & (moved > 0)
                est = (moved / last_n.abs().clamp(min=1).to(self.dtype)).clamp(0.01 * self.dg, 100.0 * self.dg)
                step = torch.where(ok, est, step)
            need = (w_t - (gp_v - gn_v) / self.g0) * self.g0 * sgn  # change of the active device [S]
            ratio = need / step
            if self.policy == "unidirectional":
                n = torch.floor(ratio + 1e-6).clamp(min=0)
            else:
                n = torch.round(ratio)
            if rnd == 0:
                n = n.clamp(-1, 1)
            n = torch.where(todo, n, 0).to(torch.int64)
            todo = todo & (n != 0)
            if not bool(todo.any()):
                break
            self._fire(torch.where(on_pos, n, 0), torch.where(on_pos, 0, n), "pulses_refresh", realised=False)
            last_n, last_g = n, g_act
        self._n["refreshes"] += n_sat
        self._n["reads_refresh"] += self._n["reads"] - reads0
        return n_sat

    # ------------------------------------------------------------------ counters
    def pulses_per_device(self) -> dict[str, torch.Tensor]:
        """Cumulative pulses per device (int64, shape of the array): ``pos_up``, ``pos_down`` (G+ potentiation /
        depression), ``neg_up``, ``neg_down`` (G-)."""
        out = {}
        for key, dev in (("pos", self.pos), ("neg", self.neg)):
            t, n = dev.pulse_count, self._net[key].value
            out[f"{key}_up"] = (t + n) // 2
            out[f"{key}_down"] = (t - n) // 2
        return out

    def count_reads(self, n_device_reads: int) -> None:
        """Add ``n_device_reads`` device reads to the counters (used by the tiles for array reads)."""
        self._n["reads"] += int(n_device_reads)

    def stats(self) -> dict[str, Any]:
        """Counters and energy: ``pulses`` (all pulses fired), ``pulses_potentiation``, ``pulses_depression``,
        ``pulses_g_pos``, ``pulses_g_neg``, ``pulses_program`` / ``pulses_refresh`` / ``pulses_set`` (by cause),
        ``reads`` (device reads; ``reads_refresh`` of them by refresh), ``refreshes`` (pairs refreshed),
        ``refresh_calls``, ``updates`` (programming requests), ``energy_J`` = ``energy_pulses_J`` +
        ``energy_reads_J`` with ``energy_pulses_J = pulse_energy · pulses``, ``energy_reads_J = energy_per_read
        · reads``, ``energy_refresh_J`` (the part spent by refresh), ``representable_fraction`` (last
        :meth:`set_weights`), ``energy_per_pulse_J``, ``energy_per_read_J``."""
        tot = {f"{k}_net": _int_total(self._net[k].value) for k in ("pos", "neg")}
        tot.update({f"{k}_total": _int_total(d.pulse_count) for k, d in (("pos", self.pos), ("neg", self.neg))})
        p = {f"{k}_up": (tot[f"{k}_total"] + tot[f"{k}_net"]) // 2 for k in ("pos", "neg")}
        p.update({f"{k}_down": (tot[f"{k}_total"] - tot[f"{k}_net"]) // 2 for k in ("pos", "neg")})
        n = dict(self._n)
        pulses = sum(p.values())
        # every pulse is counted by its device; the programming pulses are those not counted by set or refresh
        n["pulses_program"] = pulses - n["pulses_set"] - n["pulses_refresh"]
        c = self.card
        e_p = c.pulse_energy * pulses
        e_r = c.energy_per_read * n["reads"]
        return {
            "pulses": pulses,
            "pulses_potentiation": p["pos_up"] + p["neg_up"],
            "pulses_depression": p["pos_down"] + p["neg_down"],
            "pulses_g_pos": p["pos_up"] + p["pos_down"],
            "pulses_g_neg": p["neg_up"] + p["neg_down"],
            **n,
            "energy_pulses_J": e_p,
            "energy_reads_J": e_r,
            "energy_J": e_p + e_r,
            "energy_refresh_J": c.pulse_energy * n["pulses_refresh"] + c.energy_per_read * n["reads_refresh"],
            "energy_per_pulse_J": c.pulse_energy,
            "energy_per_read_J": c.energy_per_read,
            "representable_fraction": self.last_representable_fraction,
        }

