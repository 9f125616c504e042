r"""Run exported netlists in ngspice and compare them with neuromorph's solver.

Two paths:

* :class:`SharedSpice`: ngspice as a shared library through PySpice (``NgSpiceShared``, PySpice 1.5 with Debian's
  ngspice 39). One circuit is loaded per run; samples and phases re-solve it after ``alter`` of the input, target
  and nudging sources (``.op`` steady states, ``tran`` settling curves). Every run ends with ``remcirc`` and
  ``destroy all`` (:meth:`SharedSpice.close`), so memory stays flat over many runs.
* :func:`run_batch`: plain ``ngspice -b`` in a subprocess, results from an ASCII raw file (the golden-netlist
  check: the exported text is a complete SPICE deck).

:func:`cross_check` settles the same layer, inputs and conductances with neuromorph (``hw.settle_phase``) and with
ngspice and reports the largest steady-state difference in volts, the transient agreement and the EP update of
every array from each simulator's ±β steady states.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .netlist import Netlist, build_netlist

__all__ = ["SpiceUnavailable", "spice_available", "SharedSpice", "run_batch", "parse_raw", "steady_states",
           "transient", "ideal_hardware", "cross_check", "CheckResult", "rss_bytes"]


class SpiceUnavailable(RuntimeError):
    """ngspice (the program or its shared library) or PySpice is not installed."""


def spice_available() -> tuple[bool, str]:
    """``(True, "")`` when ngspice, libngspice and PySpice are usable, else ``(False, why)``."""
    if shutil.which("ngspice") is None:
        return False, "the ngspice program is not installed (Debian: apt-get install ngspice libngspice0 " \
                      "libngspice0-dev)"
    try:
        import PySpice  # noqa: F401
    except ImportError:
        return False, "PySpice is not installed (pip install 'PySpice==1.5')"
    try:
        SharedSpice._ngspice()
    except Exception as e:  # noqa: BLE001 - any load failure means "unavailable"
        return False, f"libngspice could not be loaded through PySpice: {e}"
    return True, ""


def rss_bytes() -> int:
    """Resident set size of this process [bytes] (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SharedSpice:
    """One circuit in ngspice's shared library; a context manager that always cleans up.

    >>> with SharedSpice(netlist) as sp:                      # doctest: +SKIP
    ...     sp.alter("vx_0", dc=0.1); sp.command("op"); v = sp.vectors(["u1_0"])
    """

    _instance = None

    @classmethod
    def _ngspice(cls):
        if cls._instance is None:
            logging.getLogger("PySpice").setLevel(logging.ERROR)  # "Unsupported Ngspice version 39": it works
            from PySpice.Spice.NgSpice.Shared import NgSpiceShared

            cls._instance = NgSpiceShared.new_instance()
        return cls._instance

    def __init__(self, netlist: Netlist | str) -> None:
        self.ng = self._ngspice()
        self.ng.load_circuit(str(netlist))
        self.loaded = True

    def __enter__(self) -> SharedSpice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def command(self, cmd: str) -> str:
        if any(c in cmd for c in "\n\r;"):
            raise ValueError(f"one ngspice command per call, got {cmd!r}")
        return self.ng.exec_command(cmd)

    def alter(self, element: str, **params: float) -> None:
        """``alter element p=value`` (names checked, values finite)."""
        if not re.fullmatch(r"[a-z0-9_]+", element):
            raise ValueError(f"element name {element!r} is not a sanitised SPICE name")
        for p, v in params.items():
            if not re.fullmatch(r"[a-z0-9_]+", p) or not math.isfinite(float(v)):
                raise ValueError(f"alter {element} {p}={v!r}: bad parameter or value")
            self.ng.exec_command(f"alter {element} {p}={float(v)!r}")

    def vectors(self, names: list[str], plot: str | None = None) -> np.ndarray:
        """The named vectors of a plot (default: the last) as a ``(len(names), length)`` array."""
        from PySpice.Spice.NgSpice.Shared import ffi

        lib = self.ng._ngspice_shared
        plot = plot or self.ng.last_plot
        out = []
        for n in names:
            info = lib.ngGet_Vec_Info(f"{plot}.{n}".encode())
            if info == ffi.NULL or info.v_realdata == ffi.NULL:
                raise KeyError(f"ngspice vector {plot}.{n} not found (or complex)")
            out.append(np.frombuffer(ffi.buffer(info.v_realdata, info.v_length * 8), dtype=np.float64).copy())
        return np.stack(out)

    def close(self) -> None:
        if self.loaded:
            self.loaded = False
            try:
                self.ng.remove_circuit()
            finally:
                self.ng.destroy()


# ---------------------------------------------------------------------------------------------- ngspice -b
def parse_raw(text: str) -> dict[str, np.ndarray]:
    """Vectors of an ASCII ngspice raw file (last plot): ``{name: values}`` (names lower case, ``v(n)`` → ``n``)."""
    plots = text.split("Title:")[1:]
    if not plots:
        raise ValueError("not an ASCII raw file")
    body = plots[-1]
    n_var = int(re.search(r"No\. Variables:\s*(\d+)", body).group(1))
    var_part = body.split("Variables:", 2)[-1].split("Values:")[0]
    names = [ln.split()[1].lower() for ln in var_part.strip().splitlines()[:n_var]]
    names = [n[2:-1] if n.startswith("v(") and n.endswith(")") else n for n in names]
    nums = body.split("Values:")[1].split()
    vals, i = [], 0
    while i < len(nums):
        i += 1  # point index
        vals.append([float(v.split(",")[0]) for v in nums[i:i + n_var]])
        i += n_var
    arr = np.array(vals).T
    return {n: arr[k] for k, n in enumerate(names)}


def run_batch(netlist: Netlist | str | Path, *, timeout: float = 120.0) -> dict[str, np.ndarray]:
    """Run a complete deck (netlist text, or a file path) in ``ngspice -b`` (subprocess) and return its vectors
    (:func:`parse_raw`)."""
    if isinstance(netlist, Path):
        netlist = netlist.read_text()
    exe = shutil.which("ngspice")
    if exe is None:
        raise SpiceUnavailable("the ngspice program is not installed")
    with tempfile.TemporaryDirectory() as d:
        cir, raw = Path(d) / "deck.cir", Path(d) / "out.raw"
        cir.write_text(str(netlist))
        env = dict(os.environ, SPICE_ASCIIRAWFILE="1")
        p = subprocess.run([exe, "-b", "-r", str(raw), str(cir)], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=d)
        if p.returncode != 0 or not raw.exists() or "error" in p.stderr.lower():
            raise RuntimeError(f"ngspice -b failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
        return parse_raw(raw.read_text())


# ---------------------------------------------------------------------------------------------- simulations
def _targets(n_out: int, y) -> np.ndarray:
    y = torch.as_tensor(y)
    if y.dim() == 1 and not y.is_floating_point():
        return torch.nn.functional.one_hot(y.long(), n_out).to(torch.float64).numpy()
    return y.reshape(-1, n_out).to(torch.float64).numpy()


def steady_states(netlist: Netlist, x, *, y=None, betas=(0.0,)) -> dict[float, dict[str, list[np.ndarray]]]:
    """ngspice ``.op`` steady states of every sample of ``x`` (B, n0) for every ``β`` in ``betas``.

    One circuit load; per sample the input (and target) sources are altered, per phase the nudging VCCS gains
    (``β·g0``), then ``op`` re-solves. Returns ``{β: {"v_u": [(B, n_k) V(u) per layer], "v_s": [...]}}`` [V].
    """
    lay = netlist.layout
    x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
    v_in = lay.dac(x).numpy()
    yv = _targets(len(lay.target_sources), y) * lay.vunit if y is not None else None
    u_names = [n for layer in lay.u_nodes for n in layer]
    s_names = [n for layer in lay.s_nodes for n in layer]
    sizes = [len(layer) for layer in lay.u_nodes]
    res = {float(b): {"v_u": [], "v_s": []} for b in betas}
    vu = {float(b): [] for b in betas}
    vs = {float(b): [] for b in betas}
    with SharedSpice(netlist) as sp:
        for b in range(len(x)):
            for src, v in zip(lay.input_sources, v_in[b]):
                sp.alter(src, dc=v)
            if yv is not None:
                for src, v in zip(lay.target_sources, yv[b]):
                    sp.alter(src, dc=v)
            for beta in betas:
                for g in lay.nudge_sources:
                    sp.alter(g, gain=float(beta) * lay.g0)
                sp.command("op")
                vals = sp.vectors(u_names + s_names)[:, 0]
                vu[float(beta)].append(vals[: len(u_names)])
                vs[float(beta)].append(vals[len(u_names):])
    edges = np.cumsum([0] + sizes)
    for beta in res:
        U, S = np.stack(vu[beta]), np.stack(vs[beta])
        res[beta]["v_u"] = [U[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
        res[beta]["v_s"] = [S[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    return res


def transient(netlist: Netlist, step: float, stop: float, *, tmax: float | None = None) -> tuple[np.ndarray, list]:
    """ngspice ``tran step stop 0 tmax uic`` from ``V(u) = 0`` (the sample and phase the netlist was written
    for). Returns ``(times [s], [V(u) of layer k: (n_k, T)] [V])``."""
    lay = netlist.layout
    names = [n for layer in lay.u_nodes for n in layer]
    with SharedSpice(netlist) as sp:
        sp.command(f"tran {float(step)!r} {float(stop)!r} 0 {float(tmax or step)!r} uic")
        t = sp.vectors(["time"])[0]
        v = sp.vectors(names)
    edges = np.cumsum([0] + [len(layer) for layer in lay.u_nodes])
    return t, [v[a:b] for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------------------- cross-check
def ideal_hardware(net, card="ideal", *, v_read: float = 0.2, g0: float | dict | None = None,
                   capacitance: float = 1e-12, seed: int = 0):
    """A :class:`HardwareNetwork` whose periphery is ideal (no read noise, ideal DAC/ADC, no IR drop): the model
    an exported netlist reproduces exactly (the device state: variability, write noise, stuck devices, is kept)."""
    from ..crossbar import Periphery
    from ..hardware import HardwareNetwork

    return HardwareNetwork(net, card, Periphery.ideal(v_read=v_read), g0=g0, capacitance=capacitance,
                           generator=torch.Generator().manual_seed(seed))


@dataclass
class CheckResult:
    max_dv_free: float
    """max |ΔV(u)| [V] between neuromorph's and ngspice's free steady states (all layers, samples)."""
    max_dv_nudged: float
    max_ds: float
    """max |Δs| (activities, dimensionless) over every phase."""
    update_rel: dict[str, float]
    """per array: ``‖ΔW_spice − ΔW_nm‖ / ‖ΔW_nm‖`` of the EP update from the ±β steady states."""
    tau_fit: float | None
    tau: float
    tran_max_dv: float | None
    """max |ΔV(u)| [V] between the transient curves (ngspice vs neuromorph at ngspice's time points)."""
    nm_time: float
    spice_time: float
    samples: int
    elements: int

    def lines(self) -> list[str]:
        out = [f"netlist: {self.elements} elements; {self.samples} sample(s)",
               f"steady state, free phase:   max |dV(u)| = {self.max_dv_free:.3e} V",
               f"steady state, +-beta phases: max |dV(u)| = {self.max_dv_nudged:.3e} V   max |ds| = "
               f"{self.max_ds:.3e}"]
        if self.tran_max_dv is not None:
            fit = f"fitted tau = {self.tau_fit:.6g} s" if self.tau_fit is not None else \
                "tau not fitted (coupled layers are not one exponential)"
            out.append(f"transient (sample 0, free phase, 16 tau): max |dV(u)(t)| = {self.tran_max_dv:.3e} V; {fit}; "
                       f"C/g0 = {self.tau:.6g} s")
        for k, v in self.update_rel.items():
            out.append(f"EP update {k}: relative difference ngspice vs neuromorph = {v:.3e}")
        out.append(f"time: neuromorph {self.nm_time:.3f} s, ngspice {self.spice_time:.3f} s")
        return out


def _settle_nm(hw, x, y, beta, u0=None, tol=1e-13, t_max_tau=20000):
    from ..circuit import Dopri5

    solver = Dopri5(rtol=1e-10, atol=1e-13, dt0=0.1 * hw.tau, dt_max=hw.tau)
    return hw.settle_phase(x, u0, t_max_tau, y=y, beta=beta, solver=solver, tol=tol)


def _fit_tau(t: np.ndarray, v: np.ndarray) -> float:
    """τ of ``v(t) = v∞ (1 − e^{−t/τ})`` by least squares on ``log|v∞ − v|`` over the first 3τ-ish decay."""
    vinf = v[:, -1:]
    big = np.abs(vinf[:, 0]) > 1e-3 * np.abs(vinf).max()
    r = np.abs(vinf[big] - v[big]) / np.abs(vinf[big])
    m = (r > 5e-3) & (r < 0.99) & (t[None, :] > 0)
    tt = np.broadcast_to(t, r.shape)[m]
    slope = np.polyfit(tt, np.log(r[m]), 1)[0]
    return -1.0 / slope


def cross_check(hw, x, y, beta: float, *, transient_check: bool = True) -> CheckResult:
    """neuromorph vs ngspice on the same hardware network (use :func:`ideal_hardware`), inputs ``x`` (B, n0),
    targets ``y`` and ``β``: steady states of the free and ±β phases, the transient of sample 0 and the EP
    update of every array (``hw.outer_products`` with :class:`Symmetric` ``(β)``)."""
    from ..circuit import Dopri5, FixedTime, settle
    from ..estimators import Symmetric

    net = hw.net
    x = x.to(net.dtype)
    B = x.shape[0]
    plan = Symmetric(beta).plan()
    t0 = time.perf_counter()
    free = _settle_nm(hw, x, None, 0.0)
    xJ, yJ = x.repeat(2, 1), y.repeat(2)
    betas = torch.tensor(plan.betas, dtype=x.dtype).repeat_interleave(B).unsqueeze(1)
    nudged = _settle_nm(hw, xJ, yJ, betas, u0=[u.repeat(2, 1) for u in free.u])
    nm_rows = hw.outer_products(x, y, free.state, nudged.state, plan, "ep")
    nm_time = time.perf_counter() - t0

    nl = build_netlist(hw, x[0], analysis=None)
    lay = nl.layout
    t0 = time.perf_counter()
    ss = steady_states(nl, x, y=y, betas=(0.0,) + tuple(plan.betas))
    spice_time = time.perf_counter() - t0

    def dv(nm_u, v_u):
        return max(float(np.abs(lay.to_volts(u.numpy()) - v).max()) for u, v in zip(nm_u, v_u))

    max_dv_free = dv(free.u, ss[0.0]["v_u"])
    nm_nudged = [torch.cat([u[:B], u[B:]]) for u in nudged.u]
    sp_nudged = [np.concatenate([a, b]) for a, b in zip(ss[plan.betas[0]]["v_u"], ss[plan.betas[1]]["v_u"])]
    max_dv_nudged = dv(nm_nudged, sp_nudged)
    sp_state = [torch.from_numpy(np.concatenate([a, b]) / lay.vunit).to(x.dtype)
                for a, b in zip(ss[plan.betas[0]]["v_s"], ss[plan.betas[1]]["v_s"])]
    sp_free = [torch.from_numpy(v / lay.vunit).to(x.dtype) for v in ss[0.0]["v_s"]]
    max_ds = max(float((a - b).abs().max()) for a, b in zip(sp_state + sp_free, nudged.state + free.state))
    sp_rows = hw.outer_products(x, y, sp_free, sp_state, plan, "ep")
    rel = {}
    for name, (pre, post) in nm_rows.items():
        g_nm = post.t() @ pre / B
        g_sp = sp_rows[name][1].t() @ sp_rows[name][0] / B
        rel[name] = float((g_sp - g_nm).norm() / g_nm.norm().clamp_min(1e-300))

    tau_fit = tran_dv = None
    if transient_check:
        stop = 16 * hw.tau
        tnl = build_netlist(hw, x[0], analysis=None)
        t, v = transient(tnl, hw.tau / 50, stop)
        t, idx = np.unique(t, return_index=True)
        v = [vk[:, idx] for vk in v]
        f = hw.field(x[:1])
        ref = settle(f, net.zero_state(1), solver=Dopri5(rtol=1e-10, atol=1e-12, dt0=1e-3 * hw.tau),
                     stop=FixedTime(float(t[-1])), save_at=t.tolist())
        nm_v = [np.stack([lay.to_volts(u_t[k][0].numpy()) for u_t in ref.trajectory], 1) for k in range(len(v))]
        tran_dv = max(float(np.abs(a - b).max()) for a, b in zip(nm_v, v))
        tau_fit = _fit_tau(t, v[0]) if len(v) == 1 else None  # coupled layers: not a single exponential
    return CheckResult(max_dv_free, max_dv_nudged, max_ds, rel, tau_fit, hw.tau, tran_dv, nm_time, spice_time, B,
                       lay.elements)
