r"""SPICE netlist of neuromorph's settling circuit (docs/architecture.md §2), from a :class:`HardwareNetwork`.

Topology (circuits/README.md, circuits/neuromorph.lib), per synapse array ``k`` of ``n_k x (n_{k−1} + 1)``
differential pairs:

* every pre-synaptic value ``j`` (an input ``x_j``, a neuron output ``s_{k−1,j}``, the bias line at the constant
  input 1) is a pair of row lines: ``V_j`` and its inverted copy ``−V_j`` (an ideal source and an E element of
  gain −1 for inputs and bias; the neuron output stage's own inverted output for neurons);
* ``G+_ij`` [S] joins the + row of ``j`` to column ``i``, ``G−_ij`` the − row; the column is held at 0 V by a
  0 V sense source whose current ``Σ_j (G+_ij − G−_ij) V_j = g0_k (W v)_i`` an F element copies into node ``u_i``
  with gain ``g0/g0_k`` (1 unless the arrays have their own weight scales, ``hardware.w_max = "auto"``);
* the transpose read of ``W_{k+1}`` that feeds layer ``k`` is a second instance of the same conductances
  (column ``i`` driven by ``V(s_{k+1,i})``, rows ``j+`` and ``j−`` sensed, copied into ``u_{k,j}`` with gains
  ±``g0/g0_{k+1}``; the bias row is not read backwards, as in :meth:`HardwareNetwork._fb`);
* neuron ``i`` of layer ``k``: capacitance ``C`` and leak ``g0`` from ``u`` to ground, output stage
  ``V(s) = vunit · unit(gain·V(u)/vunit + offset)`` (a B element, :data:`OUTPUT_STAGES`);
* nudging (squared error) at every output neuron: a VCCS ``gnudge_i`` injecting ``β·g0·(V(y_i) − V(s_i))`` into
  ``u_i``; ``β`` is its gain divided by ``g0`` (``alter gnudge_i gain=...``), the target ``y_i`` the voltage of
  source ``vy_i`` (``y_i · vunit``).

Scaling: ``vunit = v_read / x_max`` volts per weight unit; ``V(u) = vunit · a`` with ``a`` the pre-gain node sum,
so neuromorph's node value is ``u = gain·V(u)/vunit + offset`` and its activity ``s = V(s)/vunit``. The node
equation ``C dV(u)/dt = −g0 V(u) + I`` is neuromorph's ``τ du/dt = z − u`` with ``τ = C/g0``.

What the netlist holds from the hardware model: the programmed conductances of both devices of every pair
(``.pos.g``/``.neg.g``: device-to-device variability, write noise, stuck devices), ``g0``, ``C`` and the input
DAC (``periphery.dac``: quantised input voltages). Not modelled: read noise, drift, ADC quantisation and IR drop
(a noise-free, ideal-converter snapshot; :func:`neuromorph.spice.run.ideal_hardware` builds the matching
neuromorph model).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["SpiceLayout", "Netlist", "build_netlist", "export_netlist", "sanitize_name", "title_text", "library_path",
           "library_subckt", "to_pyspice", "OUTPUT_STAGES", "DEFAULT_OPTIONS", "TITLE_MAX"]

OUTPUT_STAGES = {"clamp01": "nm_neuron_clamp", "sigmoid": "nm_neuron_sigmoid", "tanh": "nm_neuron_tanh"}
"""Output stage subcircuit of circuits/neuromorph.lib per unit nonlinearity (``net.act.unit``)."""

DEFAULT_OPTIONS = {"reltol": 1e-9, "abstol": 1e-18, "vntol": 1e-12, "gmin": 1e-18, "itl1": 500}
"""Tight ngspice tolerances for the steady-state comparison (V: 1e-12, A: 1e-18)."""

_NAME = re.compile(r"[^A-Za-z0-9_]")

TITLE_MAX = 200
"""Most characters of the (escaped) title written into the netlist's first line; a longer title is cut and ends in
``...``. ngspice 39 keeps a first line of up to 4,999 characters: the rest of a longer one becomes a card
of its own (an injected card, or a deck ngspice rejects)."""

COMMENT_MAX = 1000
"""Most characters of any comment line (a longer one is cut and ends in ``...``)."""


def sanitize_name(name: str, what: str = "name") -> str:
    """A SPICE-safe identifier: every character outside ``[A-Za-z0-9_]`` becomes ``_`` (so no newline, dot,
    brace, space or ``=`` can reach the netlist); lower-cased (SPICE is case-insensitive). Empty → ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    out = _NAME.sub("_", name).lower()
    if not out.strip("_"):
        raise ValueError(f"{what} {name!r} has no character from [A-Za-z0-9] left after sanitising")
    return out


def title_text(title: str, limit: int = TITLE_MAX) -> str:
    """The title as the netlist writes it (in its first line, a comment): ASCII letters and digits lower-cased,
    ``_`` kept, every other ASCII character (space, newline, dot, braces, ...) as ``_``, every non-ASCII
    character escaped as ``\\uXXXX`` (``\\UXXXXXXXX`` beyond the BMP), at most ``limit`` characters (a longer
    title is cut at a whole character and ends in ``...``). Never fails on the content: the title is only a
    comment (an empty title is written ``untitled``); a title that is not a string raises ValueError."""
    if not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    limit = max(int(limit), 4)
    pieces = []
    for c in title[: limit + 1]:  # more characters cannot fit: every piece has at least one
        o = ord(c)
        if o >= 128:
            pieces.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            pieces.append(c.lower() if (c.isalnum() or c == "_") else "_")
    if len(title) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces) or "untitled"
    out, n = [], 0
    for piece in pieces:
        if n + len(piece) > limit - 3:
            break
        out.append(piece)
        n += len(piece)
    out.append("...")
    return "".join(out)


def _comment(text: str) -> str:
    """A comment line: printable ASCII only (newlines and control characters dropped), at most
    :data:`COMMENT_MAX` characters of text."""
    text = "".join(c for c in str(text) if 32 <= ord(c) < 127)
    if len(text) > COMMENT_MAX:
        text = text[: COMMENT_MAX - 3] + "..."
    return "* " + text


def _finite(name: str, value: float, *, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r}: a number is required") from None
    if not math.isfinite(v) or (positive and not v > 0):
        raise ValueError(f"{name} = {value!r}: a finite number{' > 0' if positive else ''} is required")
    return v


def _num(v: float) -> str:
    return repr(float(v))  # shortest round-trip; never contains anything but [0-9.e+-] for finite values


def _gain(v: float) -> str:
    """An F element's gain: ``1`` / ``-1`` as written since the first netlists, any other value in full."""
    return "1" if v == 1.0 else "-1" if v == -1.0 else _num(v)


def library_path() -> Path:
    """circuits/neuromorph.lib of this checkout."""
    p = Path(__file__).resolve().parents[2] / "circuits" / "neuromorph.lib"
    if not p.is_file():
        raise FileNotFoundError(f"the SPICE library {p} is missing (it ships with the neuromorph repository)")
    return p


def library_subckt(name: str) -> str:
    """The text of ``.subckt name ... .ends`` from the library (with the ``.model`` cards it references)."""
    text = library_path().read_text()
    m = re.search(rf"^\.subckt {re.escape(name)} .*?^\.ends\b[^\n]*$", text, flags=re.M | re.S)
    if m is None:
        raise KeyError(f"subcircuit {name!r} not in {library_path()}")
    block = m.group(0)
    models = [ln for ln in text.splitlines() if ln.startswith(".model ") and ln.split()[1] in block]
    return "\n".join(models + [block])


@dataclass
class SpiceLayout:
    """Names in the netlist a runner needs (all lower case) and the scaling to neuromorph's units."""

    u_nodes: list[list[str]]
    s_nodes: list[list[str]]
    input_sources: list[str]
    target_sources: list[str]
    nudge_sources: list[str]
    vunit: float
    gain: float
    offset: float
    unit: str
    g0: float
    capacitance: float
    sizes: list[int] = field(default_factory=list)
    elements: int = 0
    dac: object = None
    """``x -> input voltages [V]`` (the periphery's DAC), for a runner that alters the inputs."""

    @property
    def tau(self) -> float:
        return self.capacitance / self.g0

    def to_node_value(self, v_u: np.ndarray) -> np.ndarray:
        """Node voltages V(u) [V] → neuromorph's ``u`` (weight units)."""
        return self.gain * np.asarray(v_u) / self.vunit + self.offset

    def to_volts(self, u: np.ndarray) -> np.ndarray:
        """neuromorph's ``u`` → V(u) [V]."""
        return (np.asarray(u) - self.offset) * self.vunit / self.gain


@dataclass
class Netlist:
    text: str
    layout: SpiceLayout

    def __str__(self) -> str:
        return self.text


def _hardware_arrays(hw):
    """``[(G+, G−) forward per synapse]``, ``[(G+, G−) of the array read backwards per synapse or None]``."""
    fwd = [(a.array.pos.g, a.array.neg.g) for a in hw.forward_arrays]
    back = [None if b is None else (b.array.pos.g, b.array.neg.g) for b in hw.backward_arrays]
    return fwd, back


def _network_arrays(net, g0: float, g_min: float):
    """Conductance pairs of an ideal mapping of a :class:`LayeredNetwork`: ``G± = g_min + g0·max(±W, 0)``."""
    per, ro, back = net._split(None)
    fwd, bk = [], []
    for k, syn in enumerate(net.synapses):
        w = per[k][0].detach()
        if syn.bias:
            w = torch.cat([w, per[k][1].detach().unsqueeze(1)], 1)
        fwd.append((g_min + g0 * w.clamp(min=0), g_min + g0 * (-w).clamp(min=0)))
        if back[k] is not None:
            b = back[k].detach()
            bk.append((g_min + g0 * b.clamp(min=0), g_min + g0 * (-b).clamp(min=0)))
        else:
            bk.append(None)
    return fwd, bk


def _check_g(name: str, g: torch.Tensor) -> np.ndarray:
    a = g.detach().to("cpu", torch.float64).numpy()
    bad = ~np.isfinite(a) | (a <= 0)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"conductance {name}[{i}, {j}] = {float(a[i, j])!r} S: every conductance must be finite "
                         f"and > 0 S ({int(bad.sum())} invalid element(s) in {name})")
    return a


def _resistors(prefix: str, node_a: list[str], node_b: list[str], g: np.ndarray) -> list[str]:
    """``R<prefix>_<i>_<j> node_a[i] node_b[j] 1/g[i, j]`` for every entry (vectorised over the rows)."""
    r = (1.0 / g).tolist()
    out = []
    for i, row in enumerate(r):
        na = node_a[i]
        out.append("\n".join(f"r{prefix}_{i}_{j} {na} {node_b[j]} {v!r}" for j, v in enumerate(row)))
    return out


def build_netlist(hw_or_net, x, *, beta: float = 0.0, y=None, title: str = "neuromorph", analysis: str | None = "op",
                  tran: tuple[float, float] | None = None, options: dict | None = None, g0: float | None = None,
                  g_min: float = 1e-9, v_read: float = 0.2, capacitance: float = 1e-12,
                  save_nodes: bool = True) -> Netlist:
    """The netlist of one sample's phase (free: ``beta=0``; nudged: ``beta`` and the target ``y``).

    Args:
        hw_or_net: a :class:`~neuromorph.hardware.HardwareNetwork` (conductances from its device state, ``g0``,
            ``C``, ``v_read/x_max`` and input DAC of its periphery) or a :class:`LayeredNetwork` (ideal mapping
            ``G± = g_min + g0·max(±W, 0)`` with ``g0`` [S] (default 1e-6 S), ``g_min`` [S], ``v_read`` [V] and
            ``capacitance`` [F] given here).
        x: one input sample, ``(n0,)`` or ``(1, n0)`` (the runner alters the input sources for other samples).
        beta: nudging strength (gain of the nudging VCCS = ``β·g0``); ``y``: class index or target vector.
        title: the netlist title, written into the first line (a comment) by :func:`title_text` (ASCII, no
            newline, at most :data:`TITLE_MAX` characters); ``analysis``: ``"op"``, ``"tran"`` (needs
            ``tran = (step, stop)`` in seconds, started from ``u = 0`` with ``uic``) or ``None`` (no analysis
            line: a runner adds it).
        options: ngspice ``.options`` (default :data:`DEFAULT_OPTIONS`); names sanitised, values validated.
        save_nodes: write ``.save`` lines for the ``u`` and ``s`` nodes only (small output for large layers).
    """
    from ..hardware import HardwareNetwork

    if isinstance(hw_or_net, HardwareNetwork):
        hw = hw_or_net
        net = hw.net
        if hw.readout_array is not None:
            raise ValueError("the SPICE export covers squared-error outputs; this network has a softmax read-out "
                             "array (model.loss = 'xent')")
        fwd, back = _hardware_arrays(hw)
        g0 = hw.g0
        # arrays with their own weight scale (hardware.w_max = "auto"): each sense current is copied into the node
        # with the gain g0/g0_k, so that every array's current is in the node's units (its leak is g0)
        mirror = [g0 / hw.forward_arrays[k].g0 for k in range(len(hw.forward_arrays))]
        capacitance = hw.tau * hw.g0
        per = hw.periphery
        vunit = per.volts_per_input
        dac = per.dac
    else:
        net = hw_or_net
        if net.readout is not None:
            raise ValueError("the SPICE export covers squared-error outputs; this network has a softmax read-out")
        g0 = 1e-6 if g0 is None else g0
        _finite("g0 (S)", g0, positive=True)
        _finite("g_min (S)", g_min, positive=True)
        fwd, back = _network_arrays(net, g0, g_min)
        mirror = [1.0] * len(net.synapses)
        vunit = _finite("v_read (V)", v_read, positive=True)

        def dac(t):
            return t * vunit

    from ..network import Dense

    if not all(isinstance(s, Dense) for s in net.synapses):
        raise ValueError("only fully connected networks are exported to SPICE")
    g0 = _finite("g0 (S)", g0, positive=True)
    capacitance = _finite("capacitance (F)", capacitance, positive=True)
    beta = _finite("beta", beta)
    act = net.act
    if act.unit not in OUTPUT_STAGES:
        raise ValueError(f"no SPICE output stage for unit {act.unit!r}")
    gain, offset = _finite("activation gain", act.gain, positive=True), _finite("activation offset", act.offset)

    x = torch.as_tensor(x)
    x = x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)
    if x.shape[0] != 1:
        raise ValueError(f"one sample per netlist (x has {x.shape[0]}); the runner alters the inputs per sample")
    n0 = net.synapses[0].n_pre
    if x.shape[1] != n0:
        raise ValueError(f"x has {x.shape[1]} features, the network {n0} inputs")
    v_in = dac(x.to(torch.float64)).reshape(-1).tolist()
    for j, v in enumerate(v_in):
        _finite(f"input voltage x[{j}] (V)", v)
    v_one = float(dac(torch.ones(1, dtype=torch.float64))[0])
    sizes = [net.synapses[0].n_pre] + [s.n_post for s in net.synapses]
    n_out = sizes[-1]
    yv = np.zeros(n_out)
    if y is not None:
        yt = torch.as_tensor(y).reshape(-1)
        if yt.numel() == 1 and n_out > 1 and not yt.is_floating_point():
            yv[int(yt)] = 1.0
        else:
            if yt.numel() != n_out:
                raise ValueError(f"target y has {yt.numel()} values for {n_out} output neurons")
            yv = yt.to(torch.float64).numpy()
    elif beta != 0:
        raise ValueError("a nudged phase (beta != 0) needs targets y")
    for i, v in enumerate(yv):
        _finite(f"target y[{i}]", v)

    opts = dict(DEFAULT_OPTIONS if options is None else options)
    L = len(net.synapses)
    lines = [_comment(f"{title_text(title)}: neuromorph settling circuit, {L} synapse layer(s), sizes "
                      + "-".join(map(str, sizes))),
             _comment(f"vunit = {vunit!r} V per weight unit, g0 = {g0!r} S, C = {capacitance!r} F, "
                      f"tau = C/g0 = {capacitance / g0!r} s, gain = {gain!r}, offset = {offset!r}, beta = {beta!r}"),
             _comment("V(u) = vunit * (W s + W^T s - beta dl/ds); neuromorph u = gain*V(u)/vunit + offset; "
                      "s = V(s)/vunit"),
             _comment("topology and units: circuits/README.md; subcircuits from circuits/neuromorph.lib"),
             library_subckt(OUTPUT_STAGES[act.unit]), ""]
    # ---------------------------------------------------------------- drivers (inputs, bias)
    xp = [f"x_{j}" for j in range(n0)]
    xn = [f"xn_{j}" for j in range(n0)]
    lines.append(_comment("row drivers: inputs (V) and inverted copies"))
    lines.append("\n".join(f"vx_{j} x_{j} 0 dc {v!r}\nexn_{j} xn_{j} 0 x_{j} 0 -1" for j, v in enumerate(v_in)))
    lines.append(f"vone one 0 dc {_num(v_one)}\neonen onen 0 one 0 -1")
    # ---------------------------------------------------------------- neurons
    u_nodes = [[f"u{k}_{i}" for i in range(sizes[k])] for k in range(1, L + 1)]
    s_nodes = [[f"s{k}_{i}" for i in range(sizes[k])] for k in range(1, L + 1)]
    sn_nodes = [[f"sn{k}_{i}" for i in range(sizes[k])] for k in range(1, L + 1)]
    sub = OUTPUT_STAGES[act.unit]
    par = f"c={_num(capacitance)} g0={_num(g0)} gain={_num(gain)} offset={_num(offset)} vunit={_num(vunit)}"
    lines.append(_comment("neurons: node u, output s, inverted output sn"))
    for k in range(L):
        lines.append("\n".join(f"xn{k + 1}_{i} {u} {s} {sn} {sub} {par}"
                               for i, (u, s, sn) in enumerate(zip(u_nodes[k], s_nodes[k], sn_nodes[k]))))
    # ---------------------------------------------------------------- arrays
    n_el = 2 * n0 + 2 + 4 * sum(sizes[1:])
    for k in range(L):
        syn = net.synapses[k]
        gp = _check_g(f"G+ of w{k + 1}", fwd[k][0])
        gn = _check_g(f"G- of w{k + 1}", fwd[k][1])
        pre_p = (xp if k == 0 else s_nodes[k - 1]) + (["one"] if syn.bias else [])
        pre_n = (xn if k == 0 else sn_nodes[k - 1]) + (["onen"] if syn.bias else [])
        if gp.shape != (sizes[k + 1], len(pre_p)):
            raise ValueError(f"array w{k + 1} has shape {gp.shape}, expected {(sizes[k + 1], len(pre_p))}")
        cols = [f"c{k + 1}_{i}" for i in range(sizes[k + 1])]
        lines.append(_comment(f"array w{k + 1}: forward read, {gp.shape[0]} x {gp.shape[1]} pairs"))
        lines += _resistors(f"p{k + 1}", cols, pre_p, gp)
        lines += _resistors(f"n{k + 1}", cols, pre_n, gn)
        m = _gain(mirror[k])
        lines.append("\n".join(f"vc{k + 1}_{i} {c} 0 dc 0\nfc{k + 1}_{i} 0 {u} vc{k + 1}_{i} {m}"
                               for i, (c, u) in enumerate(zip(cols, u_nodes[k]))))
        n_el += 2 * gp.size + 2 * len(cols)
        if k == 0:
            continue
        # transpose read of w_{k+1} (or its backward array) into layer k
        name = f"w{k + 1}" + ("_back" if back[k] is not None else "")
        src = back[k] if back[k] is not None else fwd[k]
        tp = _check_g(f"G+ of {name}", src[0])[:, : sizes[k]]
        tn = _check_g(f"G- of {name}", src[1])[:, : sizes[k]]
        rp = [f"rp{k + 1}_{j}" for j in range(sizes[k])]
        rn = [f"rn{k + 1}_{j}" for j in range(sizes[k])]
        lines.append(_comment(f"array {name}: transpose read (second instance of the same conductances), "
                              f"{tp.shape[0]} x {tp.shape[1]} pairs"))
        lines += _resistors(f"tp{k + 1}", s_nodes[k], rp, tp)
        lines += _resistors(f"tn{k + 1}", s_nodes[k], rn, tn)
        lines.append("\n".join(
            f"vrp{k + 1}_{j} {a} 0 dc 0\nfrp{k + 1}_{j} 0 {u} vrp{k + 1}_{j} {m}\n"
            f"vrn{k + 1}_{j} {b} 0 dc 0\nfrn{k + 1}_{j} 0 {u} vrn{k + 1}_{j} {_gain(-mirror[k])}"
            for j, (a, b, u) in enumerate(zip(rp, rn, u_nodes[k - 1]))))
        n_el += 2 * tp.size + 4 * len(rp)
    # ---------------------------------------------------------------- nudging
    lines.append(_comment("nudging (squared error): I(u) = beta*g0*(V(y) - V(s)); alter gnudge_i gain=beta*g0"))
    lines.append("\n".join(f"vy_{i} y_{i} 0 dc {_num(yv[i] * vunit)}\ngnudge_{i} 0 {u} y_{i} {s} {_num(beta * g0)}"
                           for i, (u, s) in enumerate(zip(u_nodes[-1], s_nodes[-1]))))
    n_el += 2 * n_out
    # ---------------------------------------------------------------- control
    if opts:
        lines.append(".options " + " ".join(f"{sanitize_name(str(k), 'option')}={_num(_finite(f'option {k}', v))}"
                                            for k, v in opts.items()))
    if save_nodes:
        nodes = [n for layer in u_nodes + s_nodes for n in layer]
        for i in range(0, len(nodes), 16):
            lines.append(".save " + " ".join(f"v({n})" for n in nodes[i:i + 16]))
    if analysis == "op":
        lines.append(".op")
    elif analysis == "tran":
        if tran is None:
            raise ValueError("analysis='tran' needs tran=(step, stop) in seconds")
        step = _finite("tran step (s)", tran[0], positive=True)
        stop = _finite("tran stop (s)", tran[1], positive=True)
        lines.append(f".tran {_num(step)} {_num(stop)} uic")
    elif analysis is not None:
        raise ValueError(f"analysis must be 'op', 'tran' or None, got {analysis!r}")
    lines.append(".end")
    layout = SpiceLayout(u_nodes, s_nodes, [f"vx_{j}" for j in range(n0)], [f"vy_{i}" for i in range(n_out)],
                         [f"gnudge_{i}" for i in range(n_out)], vunit, gain, offset, act.unit, g0, capacitance,
                         sizes, n_el, dac)
    return Netlist("\n".join(lines) + "\n", layout)


def export_netlist(hw_or_net, x, *, beta: float = 0.0, y=None, **kw) -> str:
    """The netlist text (see :func:`build_netlist`)."""
    return build_netlist(hw_or_net, x, beta=beta, y=y, **kw).text


def to_pyspice(netlist: Netlist | str):
    """A PySpice ``Circuit`` holding the netlist (for users who build on PySpice objects). The elements are
    carried as raw SPICE (``circuit.raw_spice``) so that the text a simulator sees is exactly the exported one."""
    from PySpice.Spice.Netlist import Circuit

    text = str(netlist)
    body = text.splitlines()
    c = Circuit(body[0].lstrip("* ").strip() or "neuromorph")
    c.raw_spice = "\n".join(ln for ln in body[1:] if ln.strip().lower() not in (".end", ".op")
                            and not ln.lower().startswith((".tran", ".options")))
    return c
