"""The compiled relaxation loop (optional, CPU): ``_relax_kernel.c``, a whole phase in one C call.

A relaxation of a small dense network is bound by the fixed cost of its torch operations, not by their arithmetic:
the official MNIST recipe (784-512-10, batch 50) runs 50 steps of a few products per step whose output layer has
10 units. The C loop (``_relax_kernel.c``) runs every step of every layer of a phase in one call, row by row (the
rows of a batch relax independently; a row's state and the small couplings stay in the first-level cache), the
rows shared by ``torch.get_num_threads()`` threads (torch's own OpenMP threads where the library is built with
OpenMP). It computes what :func:`neuromorph.dynamics.relax` computes on its torch path (the constants of
:meth:`LayeredNetwork.constants`, the node targets of :func:`neuromorph.phase.node_targets`, the output stage and
the residual), up to rounding: the products' summation order and ``exp`` (within 2 ulp) differ.

:func:`try_relax` returns ``None`` (the caller runs the torch loop) unless every synapse is
:class:`~neuromorph.network.Dense`, the network is small enough for the compiled loop to be the faster one
(:data:`MAX_WEIGHTS`), the tensors are on the CPU in float32 or float64 and the library is built
(:mod:`neuromorph.cbuild`: compiled on first use with ``-O3 -march=native -fopenmp``, or plainer flags where those
fail; ``NEUROMORPH_KERNELS=0`` disables it; without a compiler a one-time warning names the reason).
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import torch

from . import cbuild
from .network import Dense, LayeredNetwork

__all__ = ["try_relax", "available", "status", "MAX_WEIGHTS"]

_SRC = Path(__file__).with_name("_relax_kernel.c")
_FLAGS = ("-O3", "-std=gnu99", "-fPIC", "-shared", "-fno-math-errno", "-pthread")
_EXTRA = (("-march=native", "-fopenmp"),  # this processor's vectors; the rows on the process's OpenMP threads
          ("-march=native",),  # a compiler (or an OpenMP runtime) without OpenMP: pthreads
          ())  # nor -march=native: the portable build
_UNITS = {"clamp01": 0, "sigmoid": 1, "tanh": 2}
_FUNCS = {torch.float32: "nm_relax_f32", torch.float64: "nm_relax_f64"}

MAX_WEIGHTS = 1 << 17
"""The compiled loop runs networks with at most this many weights between state layers (read-out included): it
reads each weight twice per sample and step (forward and feedback) where torch's batched products reuse it across
the batch, so beyond some 10^5 weights their per-operation cost no longer dominates and torch is as fast or faster
(measured, 2 threads, batches of 50 and 100: 784-512-10 3.7-5.9x faster compiled, 784-256-256-10 1.5-2x,
784-300-300-10 1.0-1.2x, 784-384-384-10 0.7-1.1x, 784-512-512-10 0.5-1.1x)."""

_state: dict = {"lib": None, "tried": False, "reason": None}


def _build() -> ctypes.CDLL:
    errors = []
    for extra in _EXTRA:
        try:
            dll = cbuild.build(_SRC, "relax_kernel", _FLAGS + extra)
            break
        except (RuntimeError, OSError) as e:  # a failed build or load: the next, plainer flags
            errors.append(e)
    else:
        raise errors[0]
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for suffix, real in (("_f32", ctypes.c_float), ("_f64", ctypes.c_double)):
        fn = getattr(dll, "nm_relax" + suffix)
        fn.argtypes = [i64, i64, p, p, p, i32, real, p, p, p, i64, p, real, real, i32, i64, p, i32]
        fn.restype = i32
    return dll


_kernel = cbuild.Kernel(_build, "the compiled relaxation loop", "relaxations run on their torch path (slower)",
                        lambda: _state)


def available() -> bool:
    """Whether the compiled loop is built and loaded (builds it on the first call)."""
    return _kernel.available()


def status() -> str:
    """``"compiled"`` or why not (the torch loop then runs)."""
    return _kernel.status()


class _Plan:
    """What a call needs of a network that does not change between calls: its layer sizes, its parameter tensors
    in the C loop's order (the weights, the feedback weights, the biases, the read-out) and its activation."""

    def __init__(self, net: LayeredNetwork) -> None:
        per, ro, back = net._split(None)
        self.sizes = tuple(net.state_sizes)
        n = len(self.sizes)
        weights = sum(self.sizes[k - 1] * self.sizes[k] for k in range(1, n)) * (2 if net.unidirectional else 1)
        weights += 0 if ro is None else ro.numel()
        self.ok = (all(isinstance(syn, Dense) for syn in net.synapses) and net.act.unit in _UNITS
                   and weights <= MAX_WEIGHTS)
        self.c_sizes = (ctypes.c_int64 * n)(*self.sizes)
        self.n_classes = net.n_classes
        # the C loop's order: the weights W_k, the feedback weights, the biases (None: no such array)
        self.tensors = ([None] + [per[k][0] for k in range(1, n)]
                        + [None] + [back[k] if net.unidirectional else per[k][0] for k in range(1, n)]
                        + [None] + [per[k][1] if len(per[k]) > 1 else None for k in range(1, n)])
        self.readout = ro
        self.params = [t for t in (*self.tensors, ro) if t is not None]
        self.gain, self.offset, self.unit = net.act.gain, net.act.offset, _UNITS.get(net.act.unit)


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(net: LayeredNetwork) -> _Plan:
    plan = _plans.get(net)
    if plan is None:
        plan = _plans[net] = _Plan(net)
    return plan


def _addr(t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
    """The address of ``t``, a contiguous CPU tensor of ``shape`` and ``dtype`` (0 for ``None``); ``None`` when it
    is another tensor."""
    if t is None:
        return 0
    if t.dtype != dtype or t.device.type != "cpu" or t.shape != shape or not t.is_contiguous():
        return None
    return t.data_ptr()


def try_relax(net: LayeredNetwork, drive: torch.Tensor, state, steps: int, *, y: torch.Tensor | None = None,
              beta: float | torch.Tensor = 0.0, masks: list | None = None):
    """:func:`neuromorph.dynamics.relax` (autograd-free, without trajectory) in one C call, or ``None`` where the
    compiled loop does not apply (a convolution, CUDA, another dtype, zero steps, the library not built, arguments
    of another layout); the caller then runs the torch loop. Same arguments as :func:`~neuromorph.dynamics.relax`;
    ``state`` is not modified."""
    dtype = drive.dtype
    fn = _FUNCS.get(dtype)
    if fn is None or steps <= 0 or drive.device.type != "cpu" or drive.dim() != 2:
        return None
    plan = _plan(net)
    if not plan.ok:
        return None
    lib = _kernel.load()
    if lib is None:
        return None
    sizes = plan.sizes
    batch, n_layers = drive.shape[0], len(sizes)
    if len(state) != n_layers or (masks is not None and len(masks) != n_layers):
        return None
    if any(p.dtype != dtype or p.device.type != "cpu" or not p.is_contiguous() for p in plan.params):
        return None
    state = [s.contiguous() for s in state]
    drive = drive.contiguous()
    ptrs = [0 if t is None else t.data_ptr() for t in plan.tensors]
    ptrs += [0] * n_layers if masks is None else [_addr(m, (batch, n), dtype) for m, n in zip(masks, sizes)]
    ptrs += [_addr(s, (batch, n), dtype) for s, n in zip(state, sizes)]
    drive_p = _addr(drive, (batch, sizes[0]), dtype)
    nudged = not (isinstance(beta, (int, float)) and beta == 0)
    beta_f, beta_p, labels_p, targets_p = 0.0, 0, 0, 0
    if nudged:
        if isinstance(beta, torch.Tensor):
            if beta.numel() != batch:
                return None
            beta_p = _addr(beta := beta.reshape(batch).contiguous(), (batch,), dtype)
        else:
            beta_f = float(beta)
        if y.dim() == 1:
            labels_p = _addr(y := y.to(torch.int64).contiguous(), (batch,), torch.int64)
        else:
            targets_p = _addr(y := y.to(dtype).contiguous(), (batch, plan.n_classes), dtype)
    if None in ptrs or None in (drive_p, beta_p, labels_p, targets_p):
        return None
    out = [torch.empty(batch, n, dtype=dtype) for n in sizes]
    residual = torch.empty(batch, dtype=dtype)
    ptrs += [o.data_ptr() for o in out]
    err = getattr(lib, fn)(batch, n_layers, plan.c_sizes, (ctypes.c_int64 * (6 * n_layers))(*ptrs), drive_p,
                           nudged, beta_f, beta_p, labels_p, targets_p, plan.n_classes,
                           0 if plan.readout is None else plan.readout.data_ptr(), plan.gain, plan.offset, plan.unit,
                           steps, residual.data_ptr(), torch.get_num_threads())
    if err == -1:
        raise MemoryError("the compiled relaxation loop could not allocate its buffers")
    if err:  # a label outside the classes: the torch loop raises the error
        return None
    from .dynamics import RelaxResult  # here: dynamics imports this module

    return RelaxResult(out, residual, None)
