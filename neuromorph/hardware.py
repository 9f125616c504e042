r"""The simulated-hardware substrate: EP phases as circuit settling on crossbars, updates as programming pulses.

The same network (:class:`~neuromorph.network.LayeredNetwork`), estimators and training order as the ideal
reference, on another substrate (one algorithm, two substrates: docs/architecture.md §1):

* **weights** live on :class:`~neuromorph.crossbar.CrossbarLayer` arrays of differential pairs
  ``W = (G+ − G−)/g0``. Synapse ``k`` is one array of ``n_k x (n_{k−1} + 1)`` pairs: the extra input line is
  driven at the constant input 1 and holds the bias (the usual bias column). A unidirectional network has a
  second array per synapse for ``w_k^b`` (no bias line); the softmax read-out ``w_out`` is an array too.
* **settling**: neuron ``i`` of layer ``k`` is an integrating node ``C du/dt = −g0·u + I`` with output stage
  ``s = σ(u)`` (:mod:`neuromorph.circuit`). In weight units the node target is, per layer,

      z_k(s) = γ·( W_k [s_{k−1}; 1] + W_{k+1}ᵀ s_{k+1} − β ∂ℓ/∂s_k ) + o,       τ du_k/dt = z_k(σ̃(u)) − u_k

  where every product is a crossbar read (forward: rows driven, transpose: columns driven) through the
  periphery (DAC, per-tile ADC, read noise per read, IR drop, stuck devices, drift at ``read_time``), and the
  nudging current ``−β ∂ℓ/∂s`` (squared error: ``β(y − s_N)``; softmax read-out: ``β w_outᵀ(y − ŷ)`` with
  ``ŷ = softmax(w_out s_N)`` read from the read-out array) is injected at the last layer. Explicit Euler with
  ``dt = τ`` is the discrete iteration of the reference (the identity is a test).
* **update**: from the steady states, read by an activity ADC (``activity_bits``), each layer computes its
  local rule (Eq. 24–29, or VF/KP-VF Eq. 33–37) as pre/post products, and the device layer turns the request
  into pulses (stochastic rounding, deterministic, Manhattan sign pulses, or aihwkit-style stochastic pulse
  trains of the outer products). KP-VF sends the *same* pulses (same random bits) and the same leakage
  ``−ηλW`` to the forward and backward arrays (Eq. 36).

* **convolutions** (the layout of aihwkit's analog conv layers and NeuroSim): a conv synapse is one array of
  ``c_out x (c_in·k·k + 1)`` pairs, the unrolled kernel plus the bias line. Every output position is a read of
  the same conductances (im2col: the patches are the array's input rows, read through the DAC/ADC, IR drop,
  faults and drift; every position and sample is its own read with its own read-noise draw, drawn as the
  Gaussian partial current it gives each tile's lines before the ADC (:meth:`CrossbarLayer.forward` with
  ``per_row``; around the drifted conductances; with IR drop to first order), max-pooling with its argmax
  switches sits in the neuron periphery, and the transposed product is the transposed read of the same array at
  every position, unpooled with the switches of the same evaluation and summed back onto the input nodes
  (col2im): the transposed convolution. The
  weight-shared update is one request per kernel weight, the EP rule summed over positions (rows of patches and
  unpooled posts), programmed with the same update modes as a dense array. A unidirectional conv net has a
  backward array per synapse whose forward read gives the feedback's pooling switches (Eq. 32); KP-VF programs
  both with the mean of the forward- and backward-indexed requests (Eq. 36/37). The VF rule on conv synapses
  is not simulated (it raises).
* **dropout** (App. F.3): the neuron periphery gates each node's output with the iteration's scaled mask in every
  phase, ``s̃ = m̃ ⊙ s``, and the update sees the gated activities, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .choices import SOLVERS, UPDATE_MODES
from .circuit import RK4, Bosh3, Dopri5, Euler, FixedTime, Heun, NodeField, SettleResult, SteadyState, settle
from .config import HardwareConfig
from .crossbar import CrossbarLayer, Periphery
from .crossbar.periphery import quantise
from .crossbar.tile import is_power_of_two
from .devices import DeviceCard, load_card
from .estimators import Plan, Rows, check_rule, update_rows
from .network import ConvPool, LayeredNetwork
from .phase import iterate, node_targets

__all__ = ["HardwareNetwork", "PhaseResult", "SOLVERS", "UPDATE_MODES", "make_solver"]


State = list[torch.Tensor]


def make_solver(name: str, dt: float, tau: float, rtol: float = 1e-4, atol: float = 1e-6):
    """A solver of :mod:`neuromorph.circuit` from its name; ``dt`` in units of τ (fixed steps; the adaptive
    methods start there and never step beyond it)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(SOLVERS)}")
    if name in ("euler", "heun", "rk4"):
        return {"euler": Euler, "heun": Heun, "rk4": RK4}[name](dt * tau)
    return {"bosh3": Bosh3, "dopri5": Dopri5}[name](rtol=rtol, atol=atol, dt0=dt * tau, dt_max=dt * tau)


_REST_NODE = {"clamp01": 0.0, "tanh": 0.0, "sigmoid": -40.0}  # HardwareNetwork.rest_state


def _scaled(read, scale: float, shift: float = 0.0):
    """``read(u, plus=None)`` (a new tensor) as ``scale·read(u) + shift + plus`` (the generic reads' form of
    :meth:`CrossbarLayer.exact_reader`'s ``scale`` and ``shift``)."""
    if scale == 1.0 and shift == 0.0:
        return read

    def scaled(u: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
        out = read(u) if plus is None else read(u, plus=plus * (1.0 / scale))
        out = out.mul_(scale) if scale != 1.0 else out
        return out.add_(shift) if shift != 0.0 else out

    return scaled


class _ConvReads:
    """One phase's reads of a conv synapse's array (module docstring), on flat ``(batch, n)`` activities.

    ``forward(pre)`` reads every patch of the input through the array (im2col rows: one read per position, each
    with its own read noise), max-pools the column currents in the periphery and keeps the argmax switches (of
    the backward array's forward read in a unidirectional net, Eq. 32); ``feedback(post, plus)`` unpools ``post``
    with those switches, reads the array transposed at every position and sums the patches back onto the input
    nodes (col2im), plus ``plus``: the transposed convolution through the same conductances.
    """

    def __init__(self, syn: ConvPool, in_shape: tuple[int, ...], hw: HardwareNetwork, k: int, scale: float,
                 shift: float) -> None:
        self.syn, self.in_shape = syn, in_shape
        self.conv_shape = syn.conv_shape(in_shape)
        f_arr, b_arr = hw.forward_arrays[k], hw.backward_arrays[k]
        self.fwd_rows = hw.reader(f_arr, True, bias_line=syn.bias, scale=scale, shift=shift, per_row=True)
        if b_arr is None:
            self.fb_rows = hw.reader(f_arr, False, bias_line=syn.bias, scale=scale, per_row=True)
            self.switch_rows = None
        else:
            self.fb_rows = hw.reader(b_arr, False, scale=scale, per_row=True)
            self.switch_rows = hw.reader(b_arr, True, per_row=True)
        self.idx = None
        self.exact = None
        readers = [r for r in (self.fwd_rows, self.fb_rows, self.switch_rows) if r is not None]
        if all(hasattr(r, "count") for r in readers):
            # exact reads (ideal periphery, no noise, no drift): every position's read of the programmed weights is
            # the convolution with them, so the phase runs the ideal store's convolution kernels on the shadow
            # weights (= (G+ − G−)/g0 of the arrays, the exact readers' operands) and counts the same reads
            per, _, back = hw.net._split(None)
            w = per[k]
            bias = w[1] * scale + shift if syn.bias else None
            if bias is None and shift != 0.0:
                bias = torch.full((syn.c_out,), float(shift), dtype=w[0].dtype, device=w[0].device)
            fb_w = w[0] if b_arr is None else back[k]
            self.exact = {"f": [w[0] * scale] + ([bias] if bias is not None else []), "fb": [fb_w * scale],
                          "sw": None if b_arr is None else [back[k]],
                          "positions": self.conv_shape[1] * self.conv_shape[2]}

    def patches(self, pre: torch.Tensor) -> torch.Tensor:
        """``(batch·positions, c_in·k·k)`` rows: the input patch of every output position (im2col)."""
        cols = torch.nn.functional.unfold(pre.view(pre.shape[0], *self.in_shape), self.syn.kernel,
                                          padding=self.syn.padding)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _pool(self, rows: torch.Tensor, batch: int):
        c_out, ho, wo = self.conv_shape
        c = rows.view(batch, ho * wo, c_out).transpose(1, 2).reshape(batch, c_out, ho, wo)
        return torch.nn.functional.max_pool2d(c, self.syn.pool, self.syn.pool, return_indices=True)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        batch = pre.shape[0]
        if self.exact is not None:
            e, img = self.exact, pre.view(batch, *self.in_shape)
            n = batch * e["positions"]
            self.fwd_rows.count(n)
            z, self.idx = self.syn._pool(img, e["f"][0])
            if len(e["f"]) > 1:
                z = z.add_(e["f"][1].view(-1, 1, 1))
            if e["sw"] is not None:
                self.switch_rows.count(n)
                self.idx = self.syn.indices(e["sw"], img)
            return z.reshape(batch, -1)
        rows = self.patches(pre)
        z, self.idx = self._pool(self.fwd_rows(rows), batch)
        if self.switch_rows is not None:
            self.idx = self._pool(self.switch_rows(rows), batch)[1]
        return z.reshape(batch, -1)

    def feedback(self, post: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
        batch, syn = post.shape[0], self.syn
        c_out, ho, wo = self.conv_shape
        if self.exact is not None:
            self.fb_rows.count(batch * ho * wo)
            acc = plus.view(batch, *self.in_shape) if plus is not None else \
                torch.zeros((batch, *self.in_shape), dtype=post.dtype, device=post.device)
            out = syn.add_transposed(self.exact["fb"], self.idx, acc, post.view(batch, c_out, ho // syn.pool,
                                                                                 wo // syn.pool), 1.0, False)
            return out.reshape(batch, -1)
        u = torch.nn.functional.max_unpool2d(post.view(batch, c_out, ho // syn.pool, wo // syn.pool), self.idx,
                                             syn.pool, syn.pool, output_size=(ho, wo))
        back = self.fb_rows(u.flatten(2).transpose(1, 2).reshape(batch * ho * wo, c_out))
        out = torch.nn.functional.fold(back.view(batch, ho * wo, -1).transpose(1, 2), self.in_shape[1:],
                                       syn.kernel, padding=syn.padding).reshape(batch, -1)
        return out if plus is None else out.add_(plus)


class CrossbarReads:
    """The crossbar store's reads of one phase (:class:`~neuromorph.phase.PhaseReads`), on flat ``(batch, n)``
    activities: ``fwd[k]``/``fb[k]`` the arrays' phase reads (:meth:`HardwareNetwork._phase_reads`), the input
    current held for the phase (``drive``) or read at every evaluation (``None``: ``fwd[0](x)``), the output node's
    nudge ``β(y − s)`` (squared error) or ``w_outᵀ β(y − softmax(w_out s))`` through the read-out array's forward
    and transposed reads; the gain and the offset are applied after the reads when they could not be folded
    into them (``folded``: ``γ`` a power of two)."""

    def __init__(self, fwd, fb, x: torch.Tensor, drive: torch.Tensor | None, ro_f, ro_t, nudge, g: float, o: float,
                 folded: bool, shapes: Sequence[tuple[int, ...]]) -> None:
        self.fwd, self.fb, self.x, self.drive, self.ro_f, self.ro_t = fwd, fb, x, drive, ro_f, ro_t
        self.nudged = nudge is not None
        self.beta_col, self.yo = nudge if nudge is not None else (None, None)
        self.g, self.o, self.folded, self.shapes = g, o, folded, shapes
        self.flat = all(len(sh) == 1 for sh in shapes)  # (batch, n) states: no reshapes
        self.batch = x.shape[0]

    def first(self) -> torch.Tensor:
        return self.fwd[0](self.x) if self.drive is None else self.drive

    def enter(self, s: State) -> State:
        return s if self.flat else [sk.reshape(self.batch, -1) for sk in s]

    def forward(self, k: int, pre: torch.Tensor) -> torch.Tensor:
        return self.fwd[k](pre)

    def feedback(self, k: int, post: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        # one fused read: a new tensor (the held drive is read from, never written)
        return self.fb[k](post, acc)

    def nudge(self, last: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        if self.ro_f is None:
            return acc.addcmul_(self.beta_col, self.yo - last)
        y_hat = torch.softmax(self.ro_f(last), -1)  # the logits, unscaled
        return acc.add_(self.ro_t(self.beta_col * (self.yo - y_hat)))

    def leave(self, a: State) -> State:
        if not self.folded:
            for ak in a:
                ak.mul_(self.g).add_(self.o)
        return a if self.flat else [ak.view(-1, *shape) for ak, shape in zip(a, self.shapes)]


@dataclass
class PhaseResult:
    """A settled phase: activities ``state``, node values ``u`` and the solver's report."""

    state: State
    u: State
    settle: SettleResult
    held: tuple | None = None
    """``(inputs, input current, input array state)`` when the phase held an exact read of its static input: a
    later phase on the same inputs may reuse the current (:meth:`HardwareNetwork.settle_phase`, ``after``)."""


TRANSFER_DEFAULTS = HardwareConfig().transfer()
"""Tiki-Taka / TTv2 transfer defaults: the config's ``hardware.tt_*`` defaults (one source; their docstrings say
why they differ from aihwkit's class defaults)."""

_LIVE_COLUMNS = 0.9
"""The update request skips the columns whose pre-activities are all 0 when at most this fraction is left."""


def _live_columns(pre: torch.Tensor) -> torch.Tensor | None:
    """The columns of the update rows ``pre`` (rows x inputs) with a nonzero entry, ascending; ``None`` when more
    than :data:`_LIVE_COLUMNS` of them are (then the whole request is cheaper than the gather). An all-zero column
    requests nothing (its pulse counts are 0 in every mode), so skipping it changes no count's distribution; above
    ``SPARSE_ROUNDING`` steps the stochastic rounding then draws uniforms for the live columns only
    (:meth:`DifferentialArray.round_request`)."""
    live = (pre != 0).any(0)
    k = int(live.sum())
    if k > _LIVE_COLUMNS * live.numel():
        return None
    return live.nonzero().squeeze(1)


class HardwareNetwork:
    """A :class:`LayeredNetwork` mapped onto crossbar arrays of one device card.

    Args:
        net: the network whose architecture and current weights are mapped (its parameters are kept as a
            *shadow* copy of the programmed weights, refreshed after every update: :meth:`sync_shadow`).
        card: a :class:`DeviceCard` or a preset name / card path.
        periphery: DAC/ADC/IR drop/read noise of every array (:class:`Periphery`).
        tile_size: ``(rows, cols)`` of one tile; larger matrices are split across tiles.
        g0: weight scale [S] (default: the card's range ``g_max − g_min``); a dict ``{"w1": …, "w2": …, "w_out": …}``
            gives each synapse layer (its backward array too) and the read-out its own (``hardware.w_max = "auto"``);
            the nodes' time constant ``τ = C/g0`` is then the first array's.
        mapping, policy: see :class:`~neuromorph.crossbar.pairs.DifferentialArray`.
        capacitance: node capacitance C [F]; ``τ = C/g0`` [s].
        activity_bits: resolution of the ADC that reads the neuron activities (range ``[0, 1]`` for the
            clamping output stages, ``[−1, 1]`` for tanh) for the local update; 0: exact.
        read_time: device age [s] at which reads see drift (``None``: no drift).
        reread_input: read the input array at every evaluation (a fresh read-noise draw each time) instead of
            once per phase (the static input makes its current constant; this is also what the reference does
            with its input drive, and it saves the largest product of the loop).
        generator: seeded generator (device sampling, read noise, stochastic programming).
        transfer: Tiki-Taka / TTv2 (``apply_update`` modes ``tiki_taka``, ``ttv2``): ``{"every": samples between
            two column transfers, "lr": the transfer's scale, "reset": program a transferred fast column back to 0,
            "fast_lr": the fast array's gain (its requests are this times SGD's, the transfer divided by it)}``
            (default :data:`TRANSFER_DEFAULTS`, the config's ``hardware.tt_*`` defaults).
    """

    def __init__(self, net: LayeredNetwork, card: DeviceCard | str, periphery: Periphery | None = None, *,
                 tile_size: Sequence[int] = (256, 256), g0: float | dict[str, float] | None = None,
                 mapping: str = "min",
                 policy: str = "bidirectional", capacitance: float = 1e-12, activity_bits: int = 0,
                 read_time: float | None = None, reread_input: bool = False,
                 generator: torch.Generator | None = None, transfer: dict | None = None) -> None:
        if isinstance(activity_bits, bool) or not isinstance(activity_bits, int) or activity_bits < 0:
            raise ValueError(f"activity_bits = {activity_bits!r}: an integer >= 0 is required (0: exact)")
        if not (isinstance(capacitance, (int, float)) and math.isfinite(capacitance) and capacitance > 0):
            raise ValueError(f"capacitance = {capacitance!r} F: a finite capacitance > 0 F is required")
        self.net = net
        self.card = load_card(card) if not isinstance(card, DeviceCard) else card
        self.periphery = periphery if periphery is not None else Periphery()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.activity_bits = activity_bits
        self.read_time = read_time
        self.reread_input = bool(reread_input)
        kw = dict(tile_size=tile_size, generator=self.generator, device=net.device, dtype=net.dtype,
                  mapping=mapping, policy=policy)
        per, ro, back = net._split(None)
        names = [f"w{k + 1}" for k in range(len(net.synapses))] + (["w_out"] if ro is not None else [])
        if isinstance(g0, dict):  # a weight scale per synapse layer (its backward array shares it) and read-out
            if set(g0) != set(names):
                raise ValueError(f"g0 per array: got {sorted(g0)}, the arrays are {names}")
            g0_of = dict(g0)
        else:
            g0_of = dict.fromkeys(names, g0)
        self.forward_arrays: list[CrossbarLayer] = []
        self.backward_arrays: list[CrossbarLayer | None] = []
        self.representable: dict[str, float] = {}
        for k, syn in enumerate(net.synapses):
            w = self._augment(per[k], syn)
            arr = CrossbarLayer(w.shape[0], w.shape[1], self.card, self.periphery, g0=g0_of[f"w{k + 1}"], **kw)
            self.representable[f"w{k + 1}"] = arr.set_weights(w, count=False)
            self.forward_arrays.append(arr)
            if back[k] is not None:
                wb = back[k].detach().reshape(back[k].shape[0], -1)  # a conv kernel unrolled: (c_out, c_in·k·k)
                b = CrossbarLayer(wb.shape[0], wb.shape[1], self.card, self.periphery, g0=g0_of[f"w{k + 1}"], **kw)
                self.representable[f"w{k + 1}_back"] = b.set_weights(wb, count=False)
                self.backward_arrays.append(b)
            else:
                self.backward_arrays.append(None)
        self.readout_array: CrossbarLayer | None = None
        if ro is not None:
            self.readout_array = CrossbarLayer(ro.shape[0], ro.shape[1], self.card, self.periphery, g0=g0_of["w_out"],
                                               **kw)
            self.representable["w_out"] = self.readout_array.set_weights(ro.detach(), count=False)
        self.transfer = {**TRANSFER_DEFAULTS, **(transfer or {})}
        self.fast_arrays: dict[str, CrossbarLayer] = {}
        """Tiki-Taka's fast arrays (the requests' accumulators), one per array, made at the first update."""
        self.transfers = 0
        """Samples since the first Tiki-Taka update (a column transfer every ``transfer["every"]`` samples)."""
        self._fast_kw = dict(tile_size=tile_size, generator=self.generator, device=net.device, dtype=net.dtype,
                             mapping=mapping, policy=policy)
        self.accumulators: dict[str, torch.Tensor] = {}
        """Mixed precision's digital accumulators per array (nominal steps), made at the first update."""
        self.request_macs: dict[str, int] = {}
        """Multiply-adds of the digital update requests ``postᵀ pre`` per array (rows × outputs × the input columns
        not all zero): the cost model's count of the periphery's update arithmetic (none for pulse trains)."""
        self.accumulated: dict[str, int] = {}
        """Accumulator words updated so far per array (mixed precision, TTv2's transfer buffer): the cost model's
        count of their digital work."""
        self.g0 = self.forward_arrays[0].g0
        """The first array's weight scale [S] (every array's unless ``g0`` was given per array: :attr:`g0s`)."""
        self.g0s = {name: a.g0 for name, a in self.arrays().items()}
        self.tau = float(capacitance) / self.g0
        self.sync_shadow()

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _augment(p: Sequence[torch.Tensor], syn) -> torch.Tensor:
        """The array's matrix: the weights (a conv kernel unrolled to ``(c_out, c_in·k·k)``) and the bias column."""
        w = p[0].detach().reshape(p[0].shape[0], -1)
        return torch.cat([w, p[1].detach().unsqueeze(1)], 1) if syn.bias else w

    def arrays(self) -> dict[str, CrossbarLayer]:
        """Every array by name (``w1``, ``w2``, ``w2_back``, …, ``w_out``)."""
        out = {}
        for k, (f, b) in enumerate(zip(self.forward_arrays, self.backward_arrays)):
            out[f"w{k + 1}"] = f
            if b is not None:
                out[f"w{k + 1}_back"] = b
        if self.readout_array is not None:
            out["w_out"] = self.readout_array
        return out

    @torch.no_grad()
    def sync_shadow(self) -> None:
        """Copy the programmed weights ``(G+ − G−)/g0`` (no read noise) into the shadow network's parameters."""
        per, ro, back = self.net._split(None)
        for k, syn in enumerate(self.net.synapses):
            arr = self.forward_arrays[k]
            if syn.bias:
                w, b = arr.weight_parts()  # computed once per programmed state, reused by the exact reads
                per[k][0].copy_(w.view_as(per[k][0]))
                per[k][1].copy_(b)
            else:
                per[k][0].copy_(arr.weights().view_as(per[k][0]))
            if back[k] is not None:
                back[k].copy_(self.backward_arrays[k].weights().view_as(back[k]))
        if ro is not None:
            ro.copy_(self.readout_array.weights())

    # ------------------------------------------------------------------ settling
    def _ones(self, s: torch.Tensor) -> torch.Tensor:
        return torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)

    def _fwd(self, k: int, pre: torch.Tensor) -> torch.Tensor:
        pre = pre.reshape(pre.shape[0], -1)
        return self.forward_arrays[k].forward(pre, t=self.read_time, bias_line=self.net.synapses[k].bias)

    def _fb(self, k: int, post: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
        """Current fed back into layer ``k − 1`` by synapse ``k`` (transpose read; bias line not sensed), added
        to ``plus`` (the node's other currents) when given."""
        if self.backward_arrays[k] is not None:
            return self.backward_arrays[k].transpose(post, t=self.read_time, plus=plus)
        return self.forward_arrays[k].transpose(post, t=self.read_time, bias_line=self.net.synapses[k].bias,
                                                plus=plus)

    def _phase_reads(self, scale: float = 1.0, shift: float = 0.0):
        """The reads of one phase as functions: per synapse ``k`` its forward read ``fwd[k](pre)`` (bias line held)
        and its feedback ``fb[k](post, plus)`` (:meth:`_fwd`, :meth:`_fb`), and the read-out array's forward and
        transposed reads; all but the read-out's forward read (the logits) times ``scale`` (a power of two: exact),
        ``plus`` added after the scaling, the forward reads plus ``shift`` (a node's offset, once per node). An array
        whose reads are exact (:meth:`CrossbarLayer.exact_reader`) is read by its reader, made for the phase: the
        same products and counters without the per-read lookups, which cost as much as the small products of a
        settling step."""
        t, syns = self.read_time, self.net.synapses
        fwd, fb = [], []
        for k, syn in enumerate(syns):
            f_arr, b_arr = self.forward_arrays[k], self.backward_arrays[k]
            if isinstance(syn, ConvPool):
                conv = _ConvReads(syn, self._in_shape(k), self, k, scale, shift)
                fwd.append(conv.forward)
                fb.append(conv.feedback)
                continue
            fwd.append(f_arr.exact_reader(True, t=t, bias_line=syn.bias, scale=scale, shift=shift)
                       or _scaled(partial(self._fwd, k), scale, shift))
            fb_exact = f_arr.exact_reader(False, t=t, bias_line=syn.bias, scale=scale) if b_arr is None else \
                b_arr.exact_reader(False, t=t, scale=scale)
            fb.append(fb_exact or _scaled(partial(self._fb, k), scale))
        ro = self.readout_array
        if ro is None:
            return fwd, fb, None, None
        ro_f = ro.exact_reader(True, t=t) or partial(ro.forward, t=t)
        ro_t = ro.exact_reader(False, t=t, scale=scale) or _scaled(partial(ro.transpose, t=t), scale)
        return fwd, fb, ro_f, ro_t

    def _in_shape(self, k: int) -> tuple[int, ...]:
        """The shape of synapse ``k``'s input activities (one sample)."""
        return tuple(self.net.input_shape) if k == 0 else tuple(self.net.state_shapes[k - 1])

    def reader(self, arr: CrossbarLayer, forward: bool, *, bias_line: bool = False, scale: float = 1.0,
               shift: float = 0.0, per_row: bool = False):
        """A read of ``arr`` for one phase, ``read(u, plus=None) = scale·read(u) + shift + plus``: its exact reader
        when reads are exact, else the generic read (noise, periphery) scaled; ``per_row``: each row its own read
        (its own read-noise draw, :meth:`CrossbarLayer.per_row_noise`)."""
        t = self.read_time
        exact = arr.exact_reader(forward, t=t, bias_line=bias_line, scale=scale, shift=shift if forward else 0.0)
        if exact is not None:
            return exact
        read = partial(arr.forward if forward else arr.transpose, t=t, bias_line=bias_line, per_row=per_row)
        return _scaled(read, scale, shift if forward else 0.0)

    def logits(self, state: State) -> torch.Tensor:
        """Output: ``s_N`` (squared error) or the read-out array's forward read ``w_out s_N`` (ADC)."""
        last = state[-1].reshape(state[-1].shape[0], -1)
        return last if self.readout_array is None else self.readout_array.forward(last, t=self.read_time)

    def field(self, x: torch.Tensor, y: torch.Tensor | None = None, beta: float | torch.Tensor = 0.0,
              masks: list | None = None) -> NodeField:
        """The node equation of one phase: every evaluation reads every recurrent array once forward and once
        transposed (fresh read noise each time); the input array once per phase unless ``reread_input``.
        ``masks``: the iteration's scaled dropout masks (:meth:`LayeredNetwork.sample_dropout_masks`), which gate
        every node's output (``s̃ = m̃ ⊙ s``) and its target (``(z − o)·m̃ + o``), as in the reference."""
        return self._field(x, y, beta, masks=masks)[0]

    def _input_state(self) -> tuple:
        """The input array's programmed state: its conductance tensors (held, so not recycled) and versions."""
        a = self.forward_arrays[0].array
        gp, gn = a.pos.g, a.neg.g
        return gp, gn, gp._version, gn._version

    def _reusable(self, after: PhaseResult | None, x: torch.Tensor, read0) -> torch.Tensor | None:
        """The input current of ``after`` repeated for this phase's inputs ``x``, if a read now would return it: the
        read is exact (a phase reader, not a noisy read), the input array has its state of then, and ``x`` is
        ``after``'s inputs repeated. Else ``None``."""
        if after is None or after.held is None or not hasattr(read0, "count"):
            return None
        x0, current, (gp, gn, vp, vn) = after.held
        now = self._input_state()
        if now[0] is not gp or now[1] is not gn or now[2:] != (vp, vn) or x.shape[0] % x0.shape[0]:
            return None
        reps = x.shape[0] // x0.shape[0]
        if not torch.equal(x.reshape(reps, *x0.shape), x0.expand(reps, *x0.shape)):
            return None
        read0.count(x.shape[0])  # the read the circuit makes, counted
        return current.repeat(reps, 1)

    def _field(self, x: torch.Tensor, y: torch.Tensor | None, beta: float | torch.Tensor,
               after: PhaseResult | None = None, masks: list | None = None) -> tuple[NodeField, tuple | None]:
        """:meth:`field` and the phase's ``held`` input read (:class:`PhaseResult`); ``after``: see
        :meth:`settle_phase`."""
        net = self.net
        x = net.flatten_input(x).reshape(x.shape[0], -1)
        g, o = net.act.gain, net.act.offset
        nudged = not (isinstance(beta, (int, float)) and beta == 0)
        if nudged:
            if y is None:
                raise ValueError("a nudged phase (beta != 0) needs targets y")
            yo = (net.one_hot(y) if y.dim() == 1 else y).to(x.dtype)
            beta_col = beta if isinstance(beta, torch.Tensor) else torch.full((x.shape[0], 1), float(beta),
                                                                              dtype=x.dtype, device=x.device)
        # the gain and the offset folded into the reads (z = γ·I + o: the forward read of each node carries o, as the
        # reference's constants do), unless the gain is not a power of two (then z = γ·(I) + o after the reads)
        folded = is_power_of_two(g)
        scale = g if folded else 1.0
        fwd, fb, ro_f, ro_t = self._phase_reads(scale, o if folded else 0.0)
        if nudged and ro_f is None and scale != 1.0:
            beta_col = beta_col * scale
        # the input lines carry a static input during a phase: unless reread_input, the first array is read once
        # per phase (one read-noise draw held for the phase, like a DC current); every other array every evaluation
        drive, held = None, None
        if not self.reread_input:
            drive = self._reusable(after, x, fwd[0])
            if drive is None:
                drive = fwd[0](x)
            if hasattr(fwd[0], "count"):  # an exact read: a later phase on these inputs may reuse it
                held = (x, drive, self._input_state())

        reads = CrossbarReads(fwd, fb, x, drive, ro_f, ro_t, None if not nudged else (beta_col, yo), g, o, folded,
                              net.state_shapes)

        def target(s: State) -> list[torch.Tensor]:
            return node_targets(reads, s, masks=masks, offset=o)

        return NodeField(target, net.act.unit_fn, self.tau), held

    def rest_state(self, batch: int) -> State:
        """Node values of the reset circuit, from which a free phase starts: their activities are the reference's
        ``s_0 = 0`` (Algorithm 1). ``u = 0`` for the clamping and tanh output stages; a sigmoid stage reaches 0
        only at ``u = −∞``, so its node is reset to its lower rail ``u = −40`` (``σ = 4·10⁻¹⁸``). Starting
        a sigmoid network from ``u = 0`` instead (``s = 1/2``) leads the phases of a multistable network to other
        fixed points than the reference's."""
        rest = _REST_NODE[self.net.act.unit]
        return [torch.full((batch, *sh), rest, dtype=self.net.dtype, device=self.net.device)
                for sh in self.net.state_shapes]

    @torch.no_grad()
    def settle_phase(self, x: torch.Tensor, u0: State | None, steps: int, *, y=None, beta=0.0, solver=None,
                     tol: float | None = None, after: PhaseResult | None = None,
                     masks: list | None = None) -> PhaseResult:
        """Settle one phase for ``steps·τ`` seconds at most (from ``u0``; ``None``: :meth:`rest_state`).

        ``solver`` defaults to explicit Euler with ``dt = τ``; ``tol`` (weight units, on ``max|z − u|``) stops
        early at a steady state, otherwise the phase runs exactly ``steps·τ`` (the reference's T or K steps).
        ``after``: an earlier phase (the free phase before the nudged ones); when its input read was exact, the
        input array is unchanged since and ``x`` is its inputs repeated, its input current is reused for this
        phase's input read (counted as a read: the current it would return, computed once). ``masks``: dropout,
        see :meth:`field`.
        """
        f, held = self._field(x, y, beta, after, masks)
        if u0 is None:
            u0 = self.rest_state(x.shape[0])
        if solver is None and tol is None:
            res = self._euler_tau(f, u0, steps)
            res.held = held
            return res
        solver = solver if solver is not None else Euler(self.tau)
        stop = FixedTime(steps * self.tau) if tol is None else SteadyState(tol, steps * self.tau)
        res = settle(f, u0, solver=solver, stop=stop)
        return PhaseResult(res.s, res.u, res, held)

    def _euler_tau(self, f: NodeField, u0: State, steps: int) -> PhaseResult:
        """Explicit Euler with ``dt = τ`` for ``steps`` steps, written as what it is: ``u ← z(σ̃(u))``.

        The same trajectory as :func:`~neuromorph.circuit.settle` with ``Euler(τ)`` (up to the rounding of
        ``u + τ(z − u)/τ``), without its per-step bookkeeping. The residual is that of the last step on the
        activities, ``max|s_T − s_{T−1}|`` per sample, exactly the reference relaxation's residual (a node
        driven past a rail keeps moving in ``u`` while its output stays clamped).
        """
        s, u, residual, _, _ = iterate(f.target, self.net.act.unit_, f.unit, f.state(list(u0)), steps,
                                       keep_targets=True)
        if u is None:  # zero steps: the phase stays where it starts
            u, residual = list(u0), torch.zeros(s[0].shape[0], dtype=s[0].dtype, device=s[0].device)
        res = SettleResult(u, s, steps * self.tau, None, None, residual, steps, 0, steps, "t_end")
        return PhaseResult(s, u, res)

    # ------------------------------------------------------------------ the local update
    def read_activities(self, state: State) -> State:
        """The activities as the update circuit sees them: through the activity ADC."""
        if not self.activity_bits:
            return state
        lo = -1.0 if self.net.act.unit == "tanh" else 0.0
        return [quantise(s, self.activity_bits, 1.0, signed=lo < 0) for s in state]

    def outer_products(self, x: torch.Tensor, y: torch.Tensor, free: State, nudged: State, plan: Plan,
                       rule: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The local rule of every array as rows of pre/post activities: ``∇̂ = Σ_r post_r pre_rᵀ / B``.

        The rule's requests (:func:`~neuromorph.estimators.update_rows`, the same as the reference's) from the
        ADC-read steady states (:meth:`read_activities`) and the read-out array's logits, laid out as an array
        takes them (:meth:`_array_rows`): the bias line's pre is the constant 1; a conv synapse has one row per
        phase, sample and output position (the input patch and the post unpooled with the switches, Eq. 25); the
        symmetric estimate's ±β rows are combined as differences of the phases. KP-VF's backward array receives
        its forward array's rows (Eq. 36). Returns ``{array name: (pre rows, post rows)}``.
        """
        check_rule(self.net, rule)
        if rule == "vf" and any(isinstance(s, ConvPool) for s in self.net.synapses[1:]):
            raise ValueError("the VF rule on convolutional synapses is not simulated on hardware; use "
                             "ep.rule = \"kp_vf\"")
        batch = x.shape[0]
        free, nudged = self.read_activities(free), self.read_activities(nudged)
        requests = update_rows(self.net, x, y, free, nudged, plan, batch, rule, logits=self.logits)
        rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, r in requests.items():
            if r.like is not None:  # the forward array's rows, bias line excluded
                pre, post = rows[r.like]
                has_bias = requests[r.like].bias
                rows[name] = (pre[:, :-1] if has_bias else pre, post)
            elif name == "w_out":
                rows[name] = (r.pre, r.post)
            else:
                rows[name] = self._array_rows(int(name[1:].removesuffix("_back")) - 1, r, batch)
        return rows

    def _array_rows(self, k: int, r: Rows, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A request of synapse ``k`` as the rows its array is pulsed with (bias line included when requested).
        Two switch sets (KP-VF on a conv synapse): the rows of each, with half their posts."""
        parts = [self._pair_rows(k, r, batch, of_back=kind == "back") for kind in r.switches]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).mul_(0.5)

    def _rows_of(self, k: int, pre: torch.Tensor, post: torch.Tensor, *, bias: bool = True,
                 switches_of_back: bool = False, switches_at: torch.Tensor | None = None):
        """``(pre rows, post rows)`` of synapse ``k`` for phase-stacked activities ``pre``, ``post`` (one row per
        sample; a conv synapse one per sample and output position, the post unpooled with the argmax switches of
        ``w ⋆ switches_at`` (default ``pre``) of the programmed forward or, ``switches_of_back``, backward kernel).
        ``bias``: the bias line's constant 1 as the pre rows' last column (when the synapse has one)."""
        syn, R = self.net.synapses[k], pre.shape[0]
        if isinstance(syn, ConvPool):
            per, _, back = self.net._split(None)
            w = back[k] if switches_of_back else per[k][0]
            _, aux = syn._pool(pre if switches_at is None else switches_at, w)
            u = syn.unpool(post, aux)
            post_rows = u.flatten(2).transpose(1, 2).reshape(-1, u.shape[1])
            cols = torch.nn.functional.unfold(pre, syn.kernel, padding=syn.padding)
            pre_rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        else:
            pre_rows, post_rows = pre.reshape(R, -1), post.reshape(R, -1)
        return (self._with_one(pre_rows, syn) if bias else pre_rows), post_rows

    def _pair_rows(self, k: int, r: Rows, batch: int, of_back: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of request ``r`` of synapse ``k``: ``(pre, c·post)`` per row; for the symmetric estimate
        (``r.symmetric = c``: ``c_{1,2} = ±c``) in difference form. With ``a, b`` the posts and ``p, q`` the pres
        of the ±β phases, ``c(a pᵀ − b qᵀ) = ½c[(a − b)(p + q)ᵀ + (a + b)(p − q)ᵀ]``. Same estimate; but fired as
        pulse trains, the two contrastive terms no longer go to the devices as separate large pulse trains that
        must cancel (they do not on an asymmetric device): every row now carries a difference of the phases. The
        input is the same in both phases (``p − q = 0`` for synapse 1 and for the bias line)."""
        pre = r.pre.repeat(r.post.shape[0] // batch, *([1] * (r.pre.dim() - 1))) if r.shared_pre else r.pre
        kw = dict(bias=r.bias, switches_of_back=of_back, switches_at=r.switches_at)
        if r.symmetric is None:
            return self._rows_of(k, pre, r.weighted_post(), **kw)
        p_rows, a_rows = self._rows_of(k, pre, r.post, **kw)
        h = p_rows.shape[0] // 2
        p, q, a, b = p_rows[:h], p_rows[h:], a_rows[:h], a_rows[h:]
        if r.shared_pre:  # the static input: p = q
            return p + q, (a - b).mul_(0.5 * r.symmetric)
        return torch.cat([p + q, p - q]), torch.cat([a - b, a + b]).mul_(0.5 * r.symmetric)

    def _with_one(self, pre: torch.Tensor, syn) -> torch.Tensor:
        return torch.cat([pre, self._ones(pre)], 1) if syn.bias else pre

    def lr_of(self, lrs: Sequence[float]) -> dict[str, float]:
        """Learning rate per array: one per synapse layer (shared by ``w^f`` and ``w^b``), then the read-out."""
        lrs = self.net.layer_rates(lrs)
        out = {}
        for k in range(len(self.net.synapses)):
            out[f"w{k + 1}"] = out[f"w{k + 1}_back"] = lrs[k]
        out["w_out"] = lrs[-1]
        return out

    def shared_arrays(self, rule: str) -> set[str]:
        """Backward arrays that receive their forward array's pulses (KP-VF, Eq. 36: one shared update)."""
        return {f"w{k + 1}_back" for k, b in enumerate(self.backward_arrays) if b is not None} if rule == "kp_vf" \
            else set()

    @torch.no_grad()
    def apply_update(self, rows: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int, lrs: Sequence[float], *,
                     mode: str = "stochastic_rounding", leakage: float = 0.0, threshold: float = 0.0,
                     refresh_threshold: float = 0.0, shared: set[str] = frozenset(),
                     realised: bool = False, optimizer=None) -> dict[str, torch.Tensor] | None:
        """Program ``ΔW = lr (Σ_r post_r pre_rᵀ / B − λ W)`` into every array; with ``realised=True`` returns the
        realised ``ΔW`` per array (before any refresh), else ``None`` (the training loop's case: no dense
        tensors of the changes are built).

        ``mode`` (:data:`UPDATE_MODES`): ``"stochastic_rounding"`` / ``"deterministic"`` / ``"manhattan"`` turn
        the request into pulse counts per device (:meth:`CrossbarLayer.program`); ``"mixed_precision"`` adds it to a
        digital accumulator per device pair and fires its whole steps (:meth:`_accumulate`); ``"pulse_train"`` fires
        aihwkit-style stochastic pulse trains of the rows themselves (coincidences of the pre and post trains,
        all devices in parallel). A backward array named in ``shared`` (KP-VF, :meth:`shared_arrays`) receives
        exactly the pulses of its forward array (bias line excluded): the same counts or the same trains. The
        leakage ``λ`` (Eq. 36: equal rate, each array its own weights) is requested separately from the
        programmed weights, by stochastic rounding. ``refresh_threshold`` > 0 refreshes saturated pairs.
        ``optimizer``: a :class:`~neuromorph.policies.PeripheryOptimizer` (momentum or Adam in the digital
        periphery) turns every array's estimate into the change requested (its weight decay replaces the leakage,
        every array its own state: ``shared`` does not apply); it needs a request per device (not ``pulse_train``).
        Tiki-Taka and TTv2 give every array its own fast array (``shared`` does not apply either).
        """
        if mode not in UPDATE_MODES:
            raise ValueError(f"unknown update mode {mode!r}; allowed: {', '.join(UPDATE_MODES)}")
        if optimizer is not None and mode == "pulse_train":
            raise ValueError("update mode 'pulse_train' fires the rows as stochastic pulse trains, which an optimizer "
                             "in the periphery (momentum, Adam) cannot shape; use stochastic_rounding, deterministic "
                             "or manhattan")
        lr_of = self.lr_of(lrs)
        arrays = self.arrays()
        if set(rows) != set(arrays):
            raise ValueError(f"update rows for {sorted(rows)} but the arrays are {sorted(arrays)}")
        # one float64 sum per tensor: a NaN or an infinity anywhere makes the total non-finite (a float32 row cannot
        # overflow it); then the culprit is looked for
        if not math.isfinite(float(sum(t.sum(dtype=torch.float64) for pair in rows.values() for t in pair))):
            for name, (pre, post) in rows.items():
                if not (bool(torch.isfinite(pre).all()) and bool(torch.isfinite(post).all())):
                    raise ValueError(f"the update rows of {name} contain non-finite values")
            raise ValueError("the update rows are too large to be summed in float64")
        counts: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        out = {}
        if mode in ("tiki_taka", "ttv2"):
            if realised:
                raise ValueError(f"update mode {mode!r} programs a fast array and transfers: it reports no realised "
                                 "change of the weights per update (realised=False)")
            self._tiki_taka(rows, batch, lr_of, mode, optimizer, refresh_threshold)
            return None
        changes = None
        if optimizer is not None:  # the optimizer's changes, its weight decay included: no separate leakage
            self._count_requests(rows)
            changes = optimizer.step({name: post.t() @ pre / batch for name, (pre, post) in rows.items()},
                                     {name: arr.weights() for name, arr in arrays.items()})
            leakage = 0.0
        for name, arr in arrays.items():
            pre, post = rows[name]
            lr = lr_of[name]
            da = arr.array
            before = arr.weights() if leakage else None
            if changes is not None and mode == "mixed_precision":
                c, dw = self._accumulate(name, da, changes[name].div_(da.dw), None, realised)
            elif changes is not None:
                c, dw = da.program_steps(changes[name].div_(da.dw), mode=mode, threshold=threshold / da.dw,
                                         realised=realised)
            elif name in shared:  # the forward array's pulses, bias line excluded
                n_in = da.shape[1]
                c = counts[name.removesuffix("_back")]
                c = tuple(t[:, :n_in] for t in c) if isinstance(c, tuple) else c[:, :n_in]
                dw = da.fire_coincidences(*c) if isinstance(c, tuple) else da.apply_weight_pulses(c, realised=realised)
            elif mode == "pulse_train":
                c = da.pulse_train_counts(pre, post, lr / batch)
                dw = da.fire_coincidences(*c)
            else:  # the request in nominal steps, scaled once, of the columns whose pre-activities are not all 0
                cols = _live_columns(pre)
                self._count_requests({name: (pre, post)}, None if cols is None else len(cols))
                req = (post.t() @ (pre if cols is None else pre.index_select(1, cols))).mul_(lr / (batch * da.dw))
                if mode == "mixed_precision":
                    c, dw = self._accumulate(name, da, req, cols, realised)
                else:
                    c, dw = da.program_steps(req, cols=cols, mode=mode, threshold=threshold / da.dw,
                                             realised=realised)
            counts[name] = c
            if leakage:
                dw_leak = da.program(-lr * leakage * before)
                dw = dw + dw_leak if realised else None
            if refresh_threshold > 0:
                arr.refresh(refresh_threshold)
            if realised:
                out[name] = dw
        self.sync_shadow()
        return out if realised else None

    def _count_requests(self, rows: dict, n_cols: int | None = None) -> None:
        """Count the multiply-adds of the digital requests ``postᵀ pre`` (``n_cols``: input columns computed)."""
        for name, (pre, post) in rows.items():
            macs = pre.shape[0] * post.shape[1] * (pre.shape[1] if n_cols is None else n_cols)
            self.request_macs[name] = self.request_macs.get(name, 0) + macs

    def _accumulate(self, name: str, da, req: torch.Tensor, cols: torch.Tensor | None, realised: bool):
        """Mixed precision (Nandakumar et al. 2020): the request (nominal steps; of the columns ``cols`` only, when
        given) is added to the array's digital accumulator ``χ``; every device pair whose ``|χ|`` reached one
        nominal step fires ``trunc(χ)`` pulses, and ``χ`` keeps the rest (``|χ| < 1`` step after every update).
        The accumulator subtracts the nominal steps fired, not what the device realised (the chip does not read
        its devices to update ``χ``). Returns the counts and the realised ``ΔW``."""
        acc = self.accumulators.get(name)
        if acc is None:
            acc = self.accumulators[name] = torch.zeros(da.shape, dtype=req.dtype, device=req.device)
        self.accumulated[name] = self.accumulated.get(name, 0) + req.numel()
        if cols is None:
            acc.add_(req)
        else:
            acc.index_add_(1, cols, req)
        n = torch.trunc(acc)
        acc.sub_(n)
        dtype = torch.int32 if n.numel() == 0 or float(n.abs().max()) < 2.0 ** 31 - 2 else torch.int64
        return n.to(dtype), da.apply_weight_pulses(n.to(dtype), realised=realised)

    def _fast(self, name: str) -> CrossbarLayer:
        """The fast array of ``name`` (Tiki-Taka), made at first use: the same card and shape, weights 0."""
        fast = self.fast_arrays.get(name)
        if fast is None:
            arr = self.arrays()[name]
            fast = CrossbarLayer(arr.out_features, arr.in_features, self.card, self.periphery, g0=arr.g0,
                                 **self._fast_kw)
            fast.set_weights(torch.zeros(arr.array.shape, dtype=self.net.dtype, device=self.net.device), count=False)
            self.fast_arrays[name] = fast
        return fast

    def _tiki_taka(self, rows, batch: int, lr_of: dict, mode: str, optimizer, refresh_threshold: float) -> None:
        """Tiki-Taka (Gokmen & Haensch 2020) and TTv2 (Gokmen 2021), with aihwkit's ``gamma = 0``: the weights read
        in the phases are the weight arrays ``C``; every array has a fast array ``A`` of the same devices that the
        EP requests (or the periphery optimizer's changes) are programmed into, by stochastic rounding. Every
        ``transfer["every"]`` samples (aihwkit's default unit; at most every column once per update) the next
        column of each ``A`` (in turn) is read through the periphery (a forward read of a one-hot input: read noise
        included) and ``transfer["lr"]`` times it is the request of the same
        column of ``C``: fired by stochastic rounding (``tiki_taka``) or added to a digital buffer ``H`` that fires
        its whole steps and keeps the rest (``ttv2``, the buffer's state in :attr:`accumulators`). With
        ``transfer["reset"]`` the transferred column of ``A`` is programmed back to 0 (deterministic rounding).
        ``transfer["fast_lr"]`` (aihwkit's ``fast_lr`` with ``scale_fast_lr``) multiplies the requests into ``A``, so
        that they spend more of its states, and divides the transfer (aihwkit's ``correct_gradient_magnitudes``):
        ``C``'s expected change stays SGD's."""
        arrays = self.arrays()
        changes = None
        self._count_requests(rows)
        if optimizer is not None:
            changes = optimizer.step({name: post.t() @ pre / batch for name, (pre, post) in rows.items()},
                                     {name: arr.weights() + self._fast(name).weights()
                                      for name, arr in arrays.items()})
        gain = self.transfer["fast_lr"]
        for name in arrays:
            fa = self._fast(name).array
            if changes is not None:
                fa.program_steps(changes[name].mul_(gain / fa.dw), realised=False)
            else:
                pre, post = rows[name]
                fa.program_steps((post.t() @ pre).mul_(gain * lr_of[name] / (batch * fa.dw)), realised=False)
        every, before = self.transfer["every"], self.transfers
        self.transfers += batch  # samples seen: a column transfer every `every` samples (aihwkit's default units)
        k0, n_tr = before // every, self.transfers // every - before // every
        if n_tr > 0:
            for name, arr in arrays.items():
                fast, ca = self._fast(name), arr.array
                n_in = arr.in_features
                cols = torch.unique((k0 + torch.arange(min(n_tr, n_in))) % n_in).to(self.net.device)  # ascending
                onehot = torch.zeros(len(cols), n_in, dtype=self.net.dtype, device=self.net.device)
                onehot[torch.arange(len(cols)), cols] = 1.0
                read = fast.forward(onehot, t=self.read_time).t()  # W_A[:, cols], as read (with read noise)
                req = read.mul_(self.transfer["lr"] / (gain * ca.dw))
                if mode == "ttv2":
                    buf = self.accumulators.get(name)
                    if buf is None:
                        buf = self.accumulators[name] = torch.zeros(ca.shape, dtype=req.dtype, device=req.device)
                    self.accumulated[name] = self.accumulated.get(name, 0) + req.numel()
                    part = buf[:, cols] + req
                    n = torch.trunc(part)
                    buf[:, cols] = part - n
                    full = torch.zeros(ca.shape, dtype=torch.int32, device=req.device)
                    full[:, cols] = n.to(torch.int32)
                    ca.apply_weight_pulses(full, realised=False)
                else:
                    ca.program_steps(req, cols=cols, realised=False)
                if self.transfer["reset"]:
                    fa = fast.array
                    back = (-fast.weights()[:, cols]).div_(fa.dw)
                    fa.program_steps(back, cols=cols, mode="deterministic", realised=False)
                if refresh_threshold > 0:
                    arr.refresh(refresh_threshold)
        self.sync_shadow()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: every array's devices (conductances, per-device
        parameters, stuck masks, drift exponents), counters, and the generator's state (read noise, stochastic
        programming)."""
        return {"arrays": {name: arr.state_dict() for name, arr in self.arrays().items()},
                "generator": self.generator.get_state(), "card": self.card.name,
                "accumulators": {k: v.clone() for k, v in self.accumulators.items()},
                "accumulated": dict(self.accumulated), "request_macs": dict(self.request_macs),
                "fast_arrays": {name: arr.state_dict() for name, arr in self.fast_arrays.items()},
                "transfers": self.transfers}

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        """Restore :meth:`state_dict` into this network's arrays (same card and architecture; checked) and refresh
        the shadow weights."""
        arrays = self.arrays()
        if state.get("card") != self.card.name or set(state["arrays"]) != set(arrays):
            raise ValueError(f"{where}: its hardware state is of card {state.get('card')!r} with arrays "
                             f"{sorted(state['arrays'])}; this run maps onto {self.card.name!r} with arrays "
                             f"{sorted(arrays)}")
        for name, arr in arrays.items():
            arr.load_state_dict(state["arrays"][name], f"{where}: array {name}")
        for name, fast in state.get("fast_arrays", {}).items():  # made first: making one draws from the generator
            self._fast(name).load_state_dict(fast, f"{where}: fast array of {name}")
        self.generator.set_state(state["generator"])
        self.accumulators = {k: v.clone() for k, v in state.get("accumulators", {}).items()}
        self.accumulated = {k: int(v) for k, v in state.get("accumulated", {}).items()}
        self.request_macs = {k: int(v) for k, v in state.get("request_macs", {}).items()}
        self.transfers = int(state.get("transfers", 0))
        self.sync_shadow()

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict:
        """Totals over every array: pulses, refreshes, reads, energy [J]; ``saturated_fraction``: devices within
        half a nominal step of ``g_max`` (they cannot be potentiated further), ``at_g_min_fraction`` the same at
        ``g_min`` (the rest state of the idle device of a pair with the "min" mapping)."""
        tot = {"pulses": 0, "pulses_program": 0, "pulses_refresh": 0, "refreshes": 0, "reads": 0, "energy_J": 0.0}
        n_dev, n_top, n_bottom = 0, 0, 0
        for arr in self.fast_arrays.values():  # Tiki-Taka's fast arrays: their pulses, reads and energy
            s = arr.stats()
            for key in tot:
                tot[key] += s[key]
        for arr in self.arrays().values():
            s = arr.stats()
            for key in tot:
                tot[key] += s[key]
            half = 0.5 * arr.array.dg
            for dev in (arr.array.pos, arr.array.neg):
                g = dev.g
                n_top += int((g >= dev.g_max - half).sum())
                n_bottom += int((g <= dev.g_min + half).sum())
                n_dev += g.numel()
        tot["saturated_fraction"] = n_top / max(n_dev, 1)
        tot["at_g_min_fraction"] = n_bottom / max(n_dev, 1)
        tot["devices"] = n_dev
        return tot
