r"""Crossbar tiles and layers: forward ``y = W x`` and transpose ``x' = Wᵀ y`` reads of the same devices.

Geometry
--------
A :class:`CrossbarLayer` of ``out_features x in_features`` weights is one :class:`~.pairs.DifferentialArray`
(the devices) cut into tiles of ``tile_size = (rows, cols)``: ``rows`` input lines (word lines, one per input
``x_j``) and ``cols`` outputs per tile. Each output is a differential pair of bit lines, so a tile's physical grid
is ``rows x 2·cols`` cells with the bit lines interleaved ``[G+_0, G-_0, G+_1, G-_1, ...]``. A weight matrix larger
than a tile is split across ``ceil(in/rows) x ceil(out/cols)`` tiles (the last ones partially filled); every tile has
its own DACs and ADCs.

Reads (units: see :mod:`.periphery`)
------------------------------------
Forward (``x``: (B, in) -> ``y``: (B, out)): the DACs drive the word lines of every tile with ``V = DAC(x)`` [V];
the bit-line TIAs hold virtual ground; per output the differential current ``I = I(G+ line) - I(G- line)`` [A] of
each tile is digitised by that tile's ADC; the digital partial sums of the tiles along the input dimension are
added, and ``y = I / (g0 v_read / x_max)``.

Transpose (``y``: (B, out) -> ``x'``: (B, in)): the bit-line drivers apply ``+V_i`` to the ``G+`` line and ``-V_i``
to the ``G-`` line of output ``i`` (``V = DAC(y)``), the word-line TIAs hold virtual ground and sense
``I_j = Σ_i (G+_ij - G-_ij) V_i``; ADC per tile, partial sums over the tiles along the output dimension.

Both directions read the *same* devices (``DifferentialArray.read``: each call is one read of every device per
input of the batch, with fresh read noise shared by the batch; reads counted for the energy). Without line
resistance the per-tile products are batched matrix products; with ``r_row``/``r_col`` > 0 each tile's grid is solved
by nodal analysis (:mod:`.irdrop`; the exact solver's LU factorisation is cached per tile and conductance state and
reused for the whole batch and both directions).

With a perfect device and :meth:`Periphery.ideal` the reads equal ``W x`` and ``Wᵀ y`` to float precision.

Exact reads
-----------
When the periphery is ideal (no DAC/ADC quantisation or clipping, no line resistance) and a read returns the
programmed conductance tensors themselves (no read noise, no drift at the read time), the read *is* ``W x`` with
``W = (G+ - G-)/g0``: the layer then multiplies by ``W``, cached per programmed state (the devices replace their
conductance tensors or write them in place, so the cache is keyed by the tensors and their ``_version``), instead
of scaling to volts and back. Same reads counted, same result up to rounding. A bias line (the last input line held
at 1, ``bias_line=True``) is then an ``addmm`` instead of a concatenated input. A loop that reads one programmed
state many times (the settling of a phase) takes :meth:`CrossbarLayer.exact_reader`: the same product and read
counters as a function made once, optionally scaled by a power of two and shifted (a node's gain and offset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import DeviceCard
from .irdrop import NodalSolver, currents_from_nodes, solve_iterative
from .pairs import DifferentialArray, PulseTrainParams
from .periphery import Periphery

__all__ = ["CrossbarTile", "CrossbarLayer", "is_power_of_two"]


def _exact_product(u: torch.Tensor, w: torch.Tensor, last: torch.Tensor | None, plus: torch.Tensor | None,
                   alpha: float = 1.0) -> torch.Tensor:
    """An exact read: ``alpha·(u w) (+ last) (+ plus)``, one fused product when anything is added."""
    if last is not None:
        plus = last if plus is None else plus + last
    if plus is None:
        out = u @ w
        return out if alpha == 1.0 else out.mul_(alpha)
    return torch.addmm(plus, u, w) if alpha == 1.0 else torch.addmm(plus, u, w, alpha=alpha)


def is_power_of_two(x: float) -> bool:
    """``x = 2^k`` (k an integer, either sign): multiplying by it is exact in binary floating point."""
    return isinstance(x, int | float) and x > 0 and math.isfinite(x) and math.frexp(x)[0] == 0.5


class CrossbarTile:
    """One tile of a layer: outputs ``out_slice`` x inputs ``in_slice`` of the layer's weights, with its own
    periphery state (the cached nodal factorisation). Physical grid ``rows x 2·cols`` (see the module docstring)."""

    def __init__(self, index: tuple[int, int], out_slice: slice, in_slice: slice, periphery: Periphery) -> None:
        self.index = index
        self.out_slice = out_slice
        self.in_slice = in_slice
        self.periphery = periphery
        self.rows = in_slice.stop - in_slice.start
        self.cols = out_slice.stop - out_slice.start
        self._key: tuple[torch.Tensor, torch.Tensor] | None = None
        self._solver: NodalSolver | None = None
        self.factorisations = 0

    def __repr__(self) -> str:
        return (f"CrossbarTile(index={self.index}, outputs {self.out_slice.start}:{self.out_slice.stop}, "
                f"inputs {self.in_slice.start}:{self.in_slice.stop})")

    def block(self, g: torch.Tensor) -> torch.Tensor:
        """This tile's block ``(cols, rows)`` of a layer-shaped tensor ``(out, in)``."""
        return g[self.out_slice, self.in_slice]

    def physical_conductances(self, gp: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        """The tile's grid ``(rows, 2·cols)`` [S]: word line j, bit lines ``2i`` (G+) and ``2i+1`` (G-). A read
        value below 0 S (additive read noise on a device near 0 S) is clamped to 0 S for the resistive grid."""
        gpt, gnt = self.block(gp).T, self.block(gn).T
        return torch.stack([gpt, gnt], dim=-1).reshape(self.rows, 2 * self.cols).clamp(min=0.0)

    def solver(self, gp: torch.Tensor, gn: torch.Tensor) -> NodalSolver:
        """Exact nodal solver for the conductances ``gp``, ``gn`` (cached while they do not change)."""
        bp, bn = self.block(gp), self.block(gn)
        if self._key is None or not (torch.equal(self._key[0], bp) and torch.equal(self._key[1], bn)):
            g = self.physical_conductances(gp, gn)
            self._solver = NodalSolver(g, self.periphery.r_row, self.periphery.r_col)
            self._key = (bp.clone(), bn.clone())
            self.factorisations += 1
        assert self._solver is not None
        return self._solver

    def _grid(self, gp, gn, u: torch.Tensor, w: torch.Tensor, direction: str) -> torch.Tensor:
        p = self.periphery
        if p.ir_solver == "exact":
            s = self.solver(gp, gn)
            if direction == "forward":
                out = s.forward(u.detach().cpu().numpy())
            else:
                out = s.transpose(w.detach().cpu().numpy())
            return torch.from_numpy(np.ascontiguousarray(out)).to(device=u.device, dtype=u.dtype)
        g = self.physical_conductances(gp, gn)
        vp, vq, _ = solve_iterative(g, p.r_row, p.r_col, u, w, tol=p.ir_tol, max_iter=p.ir_max_iter)
        return currents_from_nodes(g, vp, vq, direction)

    def forward_currents(self, v: torch.Tensor, gp: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        """Differential bit-line currents ``(B, cols)`` [A] for word-line voltages ``v`` ``(B, rows)`` [V] (before
        the ADC); ``gp``, ``gn``: the layer's read conductances ``(out, in)`` [S]."""
        if not self.periphery.ir_drop:
            return v @ (self.block(gp) - self.block(gn)).T
        zeros = torch.zeros(v.shape[0], 2 * self.cols, dtype=v.dtype, device=v.device)
        i = self._grid(gp, gn, v, zeros, "forward")
        return i[:, 0::2] - i[:, 1::2]

    def transpose_currents(self, v: torch.Tensor, gp: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        """Word-line currents ``(B, rows)`` [A] for output-side voltages ``v`` ``(B, cols)`` [V] (``+v`` on the G+
        bit line, ``-v`` on the G- bit line), before the ADC."""
        if not self.periphery.ir_drop:
            return v @ (self.block(gp) - self.block(gn))
        w = torch.stack([v, -v], dim=-1).reshape(v.shape[0], 2 * self.cols)
        zeros = torch.zeros(v.shape[0], self.rows, dtype=v.dtype, device=v.device)
        return self._grid(gp, gn, zeros, w, "transpose")


_CALL_KEYS = {True: ("forward_calls", "forward_samples"), False: ("transpose_calls", "transpose_samples")}


def _check_tile_size(tile_size: Sequence[int]) -> tuple[int, int]:
    try:
        rows, cols = tile_size
    except (TypeError, ValueError):
        raise ValueError(f"tile_size = {tile_size!r}: a pair (rows, cols) of integers >= 1 is required") from None
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"tile_size = {tuple(tile_size)!r}: {name} = {v!r} must be an integer >= 1")
    return rows, cols


class CrossbarLayer:
    """``out_features x in_features`` signed weights on differential device pairs, tiled, with periphery.

    Parameters: ``out_features``, ``in_features``; ``card`` (:class:`~neuromorph.devices.DeviceCard`);
    ``periphery`` (:class:`Periphery`, default ``Periphery()``: ideal converters, no IR drop, device read noise on);
    ``tile_size = (rows, cols)``: input lines and outputs per tile (module docstring); ``generator`` (seeded torch
    generator: device sampling, read noise, stochastic programming); ``device``, ``dtype``; ``g0`` [S], ``mapping``,
    ``policy``, ``weights``: see :class:`~.pairs.DifferentialArray`.

    Reads: :meth:`forward` (``y = W x``), :meth:`transpose` (``x' = Wᵀ y``). Programming: :meth:`program`,
    :meth:`program_outer`, :meth:`set_weights`, :meth:`refresh`. Counters: :meth:`stats`.
    """

    def __init__(self, out_features: int, in_features: int, card: DeviceCard, periphery: Periphery | None = None,
                 tile_size: Sequence[int] = (256, 256), *, generator: torch.Generator,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, g0: float | None = None,
                 mapping: str = "min", policy: str = "bidirectional", weights: torch.Tensor | None = None) -> None:
        for name, v in (("out_features", out_features), ("in_features", in_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} = {v!r}: an integer >= 1 is required")
        periphery = Periphery() if periphery is None else periphery
        if not isinstance(periphery, Periphery):
            raise TypeError(f"periphery must be a Periphery, not {type(periphery).__name__}")
        self.rows, self.cols = _check_tile_size(tile_size)
        self.out_features, self.in_features = out_features, in_features
        self.periphery = periphery
        self.array = DifferentialArray(card, (out_features, in_features), generator=generator, g0=g0,
                                       mapping=mapping, policy=policy, device=device, dtype=dtype, weights=weights)
        self.card = card
        self.device, self.dtype = self.array.device, dtype
        self.n_in_tiles = math.ceil(in_features / self.rows)
        self.n_out_tiles = math.ceil(out_features / self.cols)
        self.tiles = [CrossbarTile((a, b), slice(b * self.cols, min((b + 1) * self.cols, out_features)),
                                   slice(a * self.rows, min((a + 1) * self.rows, in_features)), periphery)
                      for a in range(self.n_in_tiles) for b in range(self.n_out_tiles)]
        self._cache: tuple[torch.Tensor, torch.Tensor, tuple[int, int], dict[str, torch.Tensor]] | None = None
        self.array.listeners.append(self._patch)
        p = periphery
        self._ideal_periphery = p.dac_bits is None and p.adc_bits is None and p.adc_range is None and not p.ir_drop
        self._calls = {"forward_calls": 0, "transpose_calls": 0, "forward_samples": 0, "transpose_samples": 0}

    def __repr__(self) -> str:
        return (f"CrossbarLayer({self.out_features}x{self.in_features}, card={self.card.name!r}, tiles "
                f"{self.n_in_tiles}x{self.n_out_tiles} of {self.rows}x{self.cols}, policy={self.array.policy!r})")

    # ------------------------------------------------------------------ helpers
    @property
    def g0(self) -> float:
        return self.array.g0

    @property
    def amps_per_weight_unit(self) -> float:
        """Current [A] of one unit of ``y``: ``g0 · v_read / x_max``."""
        return self.array.g0 * self.periphery.volts_per_input

    def _as_batch(self, x, n: int, name: str) -> tuple[torch.Tensor, bool]:
        if type(x) is torch.Tensor and x.dim() == 2 and x.shape[1] == n and x.dtype == self.dtype \
                and x.device == self.device:
            return x, False  # the solvers' case, checked in one line
        x = torch.as_tensor(x, device=self.device)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"{name} has shape {tuple(x.shape) if not single else (x.shape[1],)}: expected "
                             f"(batch, {n}) or ({n},)")
        if not x.is_floating_point():
            x = x.to(self.dtype)
        return x.to(self.dtype), single

    def read_conductances(self, n_reads: int = 1, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One read of every device (``n_reads`` counted): ``(G+, G-)`` [S] (read noise / drift if the periphery
        uses them)."""
        return self.array.read(t, n_reads=n_reads, noise=self.periphery.read_noise)

    def _partial_sums(self, v: torch.Tensor, gd: torch.Tensor, tile: int, forward: bool) -> torch.Tensor:
        """Σ over tiles of ADC(tile partial currents), no IR drop: v (B, n) @ gd along blocks of ``tile``."""
        p = self.periphery
        n = v.shape[1]
        n_t = math.ceil(n / tile)
        adc_identity = p.adc_range is None and p.adc_bits is None
        if n_t == 1 or adc_identity:
            i = v @ (gd.T if forward else gd)
            return i if adc_identity else p.adc(i, self.g0)
        pad = n_t * tile - n
        vp = F.pad(v, (0, pad)).reshape(v.shape[0], n_t, tile).transpose(0, 1)  # (n_t, B, tile)
        if forward:  # gd (out, in): blocks along in
            gb = F.pad(gd, (0, pad)).reshape(gd.shape[0], n_t, tile).permute(1, 2, 0)  # (n_t, tile, out)
        else:  # gd (out, in): blocks along out
            gb = F.pad(gd, (0, 0, 0, pad)).reshape(n_t, tile, gd.shape[1])  # (n_t, tile, in)
        return p.adc(torch.bmm(vp, gb), self.g0).sum(0)

    # ------------------------------------------------------------------ reads
    def _derived(self, gp: torch.Tensor, gn: torch.Tensor, what: str) -> torch.Tensor:
        """``G+ - G-`` [S] (``"gd"``), ``W = (G+ - G-)/g0`` (``"w"``), its columns but the last (``"w_main"``) and
        its last column (``"w_last"``), computed once per programmed state: reused while reads return the same
        conductance tensors, unmodified (programming replaces them or writes them in place, which moves their
        ``_version``). ``w_main`` and ``w_last`` are views of ``w`` (a BLAS product takes the row stride of
        ``w_main`` as it is, with the bits of a contiguous copy in float32), so a sparse patch of ``w`` updates them."""
        c = self._cache
        version = (gp._version, gn._version)
        if c is None or c[0] is not gp or c[1] is not gn or c[2] != version:
            c = self._cache = (gp, gn, version, {})
        d = c[3]
        if what not in d:  # each from the conductances, in place in its one fresh tensor: the bits of (gp - gn)/g0
            if what == "gd":
                d[what] = gp - gn
            else:
                w = d.get("w")
                if w is None:
                    w = d["w"] = torch.sub(gp, gn).div_(self.g0)
                d["w_main"], d["w_last"] = w[:, :-1], w[:, -1]
        return d[what]

    def _patch(self, idx: torch.Tensor, versions: tuple[int, int]) -> None:
        """After a sparse request wrote the pairs ``idx`` (flat) in place: recompute the cached derivatives at
        those pairs only (the same elementwise operations as a full rebuild, so the same bits), if the cache held
        the state just before those writes; otherwise drop it."""
        c = self._cache
        gp, gn = self.array.pos.g, self.array.neg.g
        if c is None or c[0] is not gp or c[1] is not gn or c[2] != versions:
            self._cache = None
            return
        d = c[3]
        gd = gp.reshape(-1).index_select(0, idx) - gn.reshape(-1).index_select(0, idx)
        w = gd / self.g0
        if "gd" in d:
            d["gd"].view(-1).index_copy_(0, idx, gd)
        if "w" in d:  # and its views w_main, w_last
            d["w"].view(-1).index_copy_(0, idx, w)
        self._cache = (gp, gn, (gp._version, gn._version), d)

    def state_dict(self) -> dict:
        """The array's devices and counters (:meth:`DifferentialArray.state_dict`) and this layer's read counters."""
        return {"array": self.array.state_dict(), "calls": dict(self._calls),
                "factorisations": [t.factorisations for t in self.tiles]}

    def load_state_dict(self, state: dict, where: str = "array") -> None:
        self.array.load_state_dict(state["array"], where)
        self._calls = {k: int(state["calls"][k]) for k in self._calls}
        for tile, n in zip(self.tiles, state["factorisations"]):
            tile.factorisations = int(n)
        self._cache = None

    def per_row_noise(self, t: float | None = None) -> bool:
        """Whether :meth:`forward` / :meth:`transpose` with ``per_row=True`` draw the read noise per row: the card
        has read noise and the periphery uses it (``t``: accepted for the callers; drift is applied either way). With
        IR drop the per-row noise is first order: see :meth:`_read_per_row`."""
        return bool(self.periphery.read_noise and self.card.read_noise_std > 0)

    def _read(self, u: torch.Tensor, forward: bool, t: float | None, bias_line: bool = False,
              plus: torch.Tensor | None = None, per_row: bool = False) -> torch.Tensor:
        """One read of the array from the input side (``forward``) or the output side, in weight units.
        ``bias_line``: the last input line is held at 1 (forward: ``u`` lacks it; transpose: its output dropped).
        ``plus``: a (batch, out) tensor added to the result (a node summing this read with other currents).
        ``per_row``: every row of ``u`` is its own read, with its own read-noise draw (:meth:`per_row_noise`; the
        positions of a convolution): the devices' noise ``N(0, σ²)`` per device and read (``σ = read_noise_std ·
        g_max``) gives each row's partial current on each output line of a tile a Gaussian of variance
        ``2σ² Σ_tile v_j²`` (both devices of a pair), drawn per row before the tile's ADC: the same distribution as
        a conductance draw per row, without materialising one."""
        n_in = (self.in_features - bias_line) if forward else self.out_features
        u, single = self._as_batch(u, n_in, "x" if forward else "y")
        if per_row and self.per_row_noise(t):
            return self._read_per_row(u, forward, t, bias_line, plus, single)
        gp, gn = self.read_conductances(u.shape[0], t)
        calls, samples = _CALL_KEYS[forward]
        self._calls[calls] += 1
        self._calls[samples] += u.shape[0]
        if self._ideal_periphery and gp is self.array.pos.g and gn is self.array.neg.g:
            # module docstring: exact reads
            out = _exact_product(u, *self._exact_operands(gp, gn, forward, bias_line), plus)
            return out[0] if single else out
        if bias_line and forward:
            u = torch.cat([u, torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)], 1)
        n_out = self.out_features if forward else self.in_features
        v = self.periphery.dac(u)
        if not self.periphery.ir_drop:
            i = self._partial_sums(v, self._derived(gp, gn, "gd"), self.rows if forward else self.cols,
                                   forward=forward)
        else:
            i = torch.zeros(u.shape[0], n_out, dtype=self.dtype, device=self.device)
            for tile in self.tiles:
                src, dst = (tile.in_slice, tile.out_slice) if forward else (tile.out_slice, tile.in_slice)
                currents = tile.forward_currents if forward else tile.transpose_currents
                i[:, dst] += self.periphery.adc(currents(v[:, src], gp, gn), self.g0)
        out = i / self.amps_per_weight_unit
        if bias_line and not forward:
            out = out[:, :-1]
        if plus is not None:
            out = out + plus
        return out[0] if single else out

    def _read_per_row(self, u: torch.Tensor, forward: bool, t: float | None, bias_line: bool,
                      plus: torch.Tensor | None, single: bool) -> torch.Tensor:
        """:meth:`_read` with a read-noise draw per row: see its ``per_row``. The noise is drawn around the
        conductances at ``t`` (drift and stuck devices, :meth:`DeviceArray.drifted`), exactly as a conductance draw
        per row would be. With IR drop, each tile's IR-dropped currents of the drifted conductances get the same
        Gaussian partial current (computed from the applied line voltages) before the tile's ADC: first order in
        the noise, whose currents see the devices' voltages, a few percent below the applied ones where the IR
        drop is small (tested against conductance draws per row, ``tests/test_hardware_conv.py``)."""
        array = self.array
        gp, gn = array.pos.drifted(t), array.neg.drifted(t)
        array.count_exact_read(u.shape[0], noise=True)
        calls, samples = _CALL_KEYS[forward]
        self._calls[calls] += 1
        self._calls[samples] += u.shape[0]
        if bias_line and forward:
            u = torch.cat([u, torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)], 1)
        v = self.periphery.dac(u)
        sigma = self.card.read_noise_std * self.card.g_max
        n, B = v.shape[1], v.shape[0]
        if self.periphery.ir_drop:
            out = torch.zeros(B, self.out_features if forward else self.in_features, dtype=self.dtype,
                              device=self.device)
            for tile in self.tiles:
                src, dst = (tile.in_slice, tile.out_slice) if forward else (tile.out_slice, tile.in_slice)
                vs = v[:, src]
                i = (tile.forward_currents if forward else tile.transpose_currents)(vs, gp, gn)
                std = (2.0 * sigma * sigma * (vs * vs).sum(-1, keepdim=True)).sqrt_()  # (B, 1)
                i = i + std * torch.randn(i.shape, generator=array.generator, dtype=i.dtype, device=i.device)
                out[:, dst] += self.periphery.adc(i, self.g0)
            out = out / self.amps_per_weight_unit
        else:
            gd = self._derived(gp, gn, "gd") if gp is array.pos.g and gn is array.neg.g else gp - gn
            tile = self.rows if forward else self.cols
            n_t = math.ceil(n / tile)
            pad = n_t * tile - n
            vp = F.pad(v, (0, pad)).reshape(B, n_t, tile).transpose(0, 1)  # (n_t, B, tile)
            gb = (F.pad(gd, (0, pad)).reshape(gd.shape[0], n_t, tile).permute(1, 2, 0) if forward else
                  F.pad(gd, (0, 0, 0, pad)).reshape(n_t, tile, gd.shape[1]))  # (n_t, tile, out)
            i = torch.bmm(vp, gb)  # (n_t, B, out) partial currents
            std = (2.0 * sigma * sigma * (vp * vp).sum(-1, keepdim=True)).sqrt_()  # (n_t, B, 1)
            i = i + std * torch.randn(i.shape, generator=array.generator, dtype=i.dtype, device=i.device)
            out = self.periphery.adc(i, self.g0).sum(0) / self.amps_per_weight_unit
        if bias_line and not forward:
            out = out[:, :-1]
        if plus is not None:
            out = out + plus
        return out[0] if single else out

    def _exact_operands(self, gp: torch.Tensor, gn: torch.Tensor, forward: bool,
                        bias_line: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The matrix an exact read multiplies by (``Wᵀ`` forward, ``W`` transposed; without the bias line's column
        with ``bias_line``) and the bias line's current (forward with ``bias_line``, else ``None``)."""
        w = self._derived(gp, gn, "w_main" if bias_line else "w")
        last = self._derived(gp, gn, "w_last") if bias_line and forward else None
        return (w.T if forward else w), last

    def exact_reader(self, forward: bool = True, *, t: float | None = None, bias_line: bool = False,
                     scale: float = 1.0, shift: float = 0.0):
        """A read of this layer as a plain function ``read(u, plus=None)``, for a loop that reads the same
        programmed state many times (the settling of one phase), or ``None`` when reads are not exact (module
        docstring: the periphery is not ideal, or a read at ``t`` has noise or drift).

        ``read`` is :meth:`forward` (``forward=True``) or :meth:`transpose` for a checked ``(batch, n)`` input of the
        layer's dtype and device, with the same result and the same read counters, without the per-call checks and
        lookups; ``scale`` (a power of two) multiplies the read, bit for bit ``scale ×`` the read, in its product,
        and ``shift`` is added to every output with the bias line's current: ``read(u, plus)`` is then
        ``scale·read(u) + shift + plus`` (a node's gain and offset folded into its currents). It belongs to the
        programmed state it was made for: programming the array afterwards makes it raise (make a new one)."""
        if not is_power_of_two(scale):
            raise ValueError(f"scale = {scale!r}: a power of two is required (an exact scaling)")
        if not (self._ideal_periphery and self.array.reads_exact(t, noise=self.periphery.read_noise)):
            return None
        array, pos, neg = self.array, self.array.pos, self.array.neg
        gp, gn = pos.g, neg.g
        state = (gp._version, gn._version)
        w, last = self._exact_operands(gp, gn, forward, bias_line)
        if last is not None and scale != 1.0:
            last = last * scale
        if shift != 0.0:
            n_out = w.shape[1]
            last = torch.full((n_out,), float(shift), dtype=w.dtype, device=w.device) if last is None else \
                last + shift
        calls, samples = _CALL_KEYS[forward]
        counters, noise = self._calls, self.periphery.read_noise

        def count(batch: int) -> None:
            array.count_exact_read(batch, noise=noise)
            counters[calls] += 1
            counters[samples] += batch

        def read(u: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
            if pos.g is not gp or neg.g is not gn or (gp._version, gn._version) != state:
                raise RuntimeError("the array was programmed since this reader was made: make a new one")
            if u.dtype != w.dtype:
                u = u.to(w.dtype)
            count(u.shape[0])
            return _exact_product(u, w, last, plus, scale)

        read.count = count  # the counters of one read of a batch, for a caller that has its result already
        return read

    def forward(self, x: torch.Tensor, *, t: float | None = None, bias_line: bool = False,
                per_row: bool = False) -> torch.Tensor:
        """``y = W x`` through DACs, the devices (read noise, drift at ``t`` [s]), IR drop and per-tile ADCs.
        ``x``: (B, in) or (in,); returns (B, out) or (out,) in weight units. ``bias_line=True``: ``x`` has
        ``in - 1`` columns and the last input line is held at 1 (``W [x; 1]``). ``per_row``: a read-noise draw per
        row (each row its own read, :meth:`per_row_noise`) instead of one per call."""
        return self._read(x, True, t, bias_line, per_row=per_row)

    __call__ = forward

    def transpose(self, y: torch.Tensor, *, t: float | None = None, bias_line: bool = False,
                  plus: torch.Tensor | None = None, per_row: bool = False) -> torch.Tensor:
        """``x' = Wᵀ y`` through the output-side drivers, the same devices, IR drop and per-tile ADCs on the input
        lines. ``y``: (B, out) or (out,); returns (B, in) or (in,) in weight units (``in - 1`` with
        ``bias_line=True``: the bias line's current is not sensed). ``plus``: added to the result (a node that
        sums this read with other currents; one fused product on the exact path). ``per_row``: as in
        :meth:`forward`."""
        return self._read(y, False, t, bias_line, plus, per_row=per_row)

    # ------------------------------------------------------------------ weights and programming
    def weights(self) -> torch.Tensor:
        """Programmed weights ``(G+ - G-)/g0`` (out, in) (no read noise, no read counted); a new tensor."""
        return self._derived(self.array.pos.g, self.array.neg.g, "w").clone()

    def weight_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``weights()`` split into its columns but the last and its last column (a bias line), without copies:
        the cached tensors of the programmed state, read-only."""
        g = (self.array.pos.g, self.array.neg.g)
        return self._derived(*g, "w_main"), self._derived(*g, "w_last")

    def weights_to_conductances(self, w: torch.Tensor, **kw):
        return self.array.weights_to_conductances(w, **kw)

    def conductances_to_weights(self, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
        return self.array.conductances_to_weights(g_pos, g_neg)

    def set_weights(self, w: torch.Tensor, *, count: bool = True) -> float:
        """See :meth:`DifferentialArray.set_weights`; returns the representable fraction."""
        return self.array.set_weights(w, count=count)

    def program(self, delta_w: torch.Tensor, *, mode: str = "stochastic_rounding", threshold: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """See :meth:`DifferentialArray.program`."""
        return self.array.program(delta_w, mode=mode, threshold=threshold, generator=generator)

    def program_outer(self, x: torch.Tensor, d: torch.Tensor, lr: float, *, params: PulseTrainParams | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """See :meth:`DifferentialArray.program_outer` (``ΔW = lr Σ_b d_b x_bᵀ``, aihwkit pulse trains)."""
        return self.array.program_outer(x, d, lr, params=params, generator=generator)

    def refresh(self, threshold: float, **kw) -> int:
        """See :meth:`DifferentialArray.refresh`."""
        return self.array.refresh(threshold, **kw)

    def stats(self) -> dict[str, Any]:
        """The array's counters and energy (:meth:`DifferentialArray.stats`) plus read calls and samples per
        direction, the tile grid and the number of nodal factorisations."""
        s = self.array.stats()
        s.update(self._calls)
        s["tiles"] = len(self.tiles)
        s["tile_grid"] = (self.n_in_tiles, self.n_out_tiles)
        s["ir_factorisations"] = sum(t.factorisations for t in self.tiles)
        return s
