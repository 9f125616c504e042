"""Compiled programming loops (optional, CPU): ``_pulse_kernel.c``, built on first use.

A training update pulses a few percent of a large array's devices, one to a few pulses each. In torch, each step of
that work is a pass over a short vector (a gather, an elementwise op, a scatter), about twenty per pulse, and the
update dominates a hardware training step. The C loops do each part in one pass over the pulsed devices:

* :func:`step`: the pulse loop of the step models without a closed form (:meth:`DeviceArray._step_at`) and the
  write-noise redraw, consuming the same random numbers in the same order as the torch path (drawn by torch from
  the array's generator, :meth:`DeviceArray._pulse_normals`): the two agree to the rounding of ``exp`` (tested);
* :func:`split` and :func:`round_split`: a sparse request of a differential pair array, its pairs found and split
  into each device's pulses by the pair policy (:meth:`DifferentialArray._split`), after the stochastic rounding of
  the request with the uniforms torch drew (``round_split``): the same integers as the torch path (tested);
* :func:`add_at`: a pulse counter's pending sparse adds (:class:`~neuromorph.devices.models.Tally`), exact.

The library is built by :mod:`neuromorph.cbuild` (the C compiler of the Python build, ``$CC`` overrides it; cached in
``$NEUROMORPH_CACHE/kernels``, default ``~/.cache/neuromorph/kernels``, keyed by a hash of the source, the compiler
and flags and the machine's architecture). Without a compiler (or with ``NEUROMORPH_KERNELS=0``) the torch path
runs, with a one-time warning naming the reason; :func:`status` says which is in use.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from .. import cbuild

__all__ = ["available", "status", "step", "split", "round_split", "add_at", "MODELS"]

_SRC = Path(__file__).with_name("_pulse_kernel.c")
_FLAGS = ("-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
MODELS = {"exp_step": 0, "exp_step_complex": 1, "constant_step": 2, "linear_step": 3, "linear_step_mult": 4}
"""Model codes of the C loop (``_pulse_kernel.c``); ``soft_bounds`` runs as ``linear_step`` (its steps are linear)."""

_state: dict = {"lib": None, "tried": False, "reason": None}
_compiler = cbuild.compiler


def _build() -> ctypes.CDLL:
    dll = cbuild.build(_SRC, "pulse_kernel", _FLAGS)
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for suffix, real in (("_f32", ctypes.c_float), ("_f64", ctypes.c_double)):
        for name, restype, argtypes in (
                ("nm_step", None, [i64, p, p, p, p, p, i32, p, p, p, i32, *[real] * 6, p, p, p]),
                ("nm_round", i64, [i64, i64, i64, p, p, p, p, p, p, real, i32, i64, *[p] * 8]),
                ("nm_split", i64, [i64, p, p, p, real, i32, i64, *[p] * 8])):
            fn = getattr(dll, name + suffix)
            fn.argtypes, fn.restype = argtypes, restype
    dll.nm_add_at.argtypes, dll.nm_add_at.restype = [i64, p, p, p], None
    return dll


_kernel = cbuild.Kernel(_build, "the compiled pulse loop", "programming runs on its torch path (slower)",
                        lambda: _state)


def _load() -> ctypes.CDLL | None:
    return _kernel.load()


def available() -> bool:
    """Whether the compiled loops are built and loaded (builds them on the first call)."""
    return _load() is not None


def status() -> str:
    """``"compiled"`` or why not (the torch paths then run)."""
    return _kernel.status()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def step(model: int, idx: torch.Tensor, n: torch.Tensor, gp: torch.Tensor, gapp: torch.Tensor | None,
         rows: torch.Tensor, consts: torch.Tensor, xi: torch.Tensor | None, xw: torch.Tensor | None, *,
         sigma: float, add_std: float, slope_std: float, s: float, g_ref: float, sw: float) -> None:
    """Apply ``n[j]`` pulses (nonzero) to the device of flat index ``idx[j]`` (distinct) in place in ``gp``, and
    set ``gapp`` there to ``max(gp + sw·xw, 0)`` (``gapp``/``xw`` ``None``: no write noise). ``rows``: ``(N, 4)``
    or ``(N, 6)`` per-device parameters (:meth:`DeviceArray._kernel_rows`), ``consts`` the exp_step constants
    (``_pulse_kernel.c``); ``xi``: the level-major cycle-to-cycle normals (``sum |n|``, or ``None`` when the
    model draws none). Every tensor contiguous, on the CPU, of the dtype of ``gp`` (indices and counts int64). The
    caller moves the written tensors' ``_version`` (readers key caches on it). Raises if the library is not
    available."""
    lib = _lib()
    a = idx.numel()
    if a == 0:
        return
    fn = lib.nm_step_f32 if gp.dtype == torch.float32 else lib.nm_step_f64
    w = torch.empty(a, dtype=gp.dtype)
    local = torch.empty(a, rows.shape[1], dtype=gp.dtype)  # the pulsed devices' parameter rows, gathered
    work = torch.empty(a, dtype=torch.int64)
    fn(a, idx.data_ptr(), n.data_ptr(), gp.data_ptr(), _ptr(gapp), rows.data_ptr(), rows.shape[1],
       consts.data_ptr(), _ptr(xi), _ptr(xw), model, sigma, add_std, slope_std, s, g_ref, sw, w.data_ptr(),
       local.data_ptr(), work.data_ptr())


def _lib() -> ctypes.CDLL:
    return _kernel.require()


def _split_call(name: str, dtype: torch.dtype, max_pairs: int, numel: int, *args):
    """Call the splitting function ``name`` (``_f32``/``_f64`` by ``dtype``) with ``args``, then its list buffers
    and lengths; returns ``None`` past ``max_pairs`` pairs, else the pairs and the two devices' lists."""
    fn = getattr(_lib(), f"{name}_f32" if dtype == torch.float32 else f"{name}_f64")
    size = max(min(max_pairs, numel), 0)
    buf = torch.empty(7, size + 1, dtype=torch.int64)  # + 1: the branch-free compaction writes one past the end
    ab = torch.zeros(2, dtype=torch.int64)
    m = fn(*args, size, *(buf[i].data_ptr() for i in range(7)), ab.data_ptr())
    if m < 0:
        return None
    a, b = ab.tolist()
    return buf[0, :m], (buf[1, :a], buf[2, :a], buf[3, :a]), (buf[4, :b], buf[5, :b], buf[6, :b])


def round_split(req: torch.Tensor, u: torch.Tensor, cols: torch.Tensor | None, width: int, n: torch.Tensor,
                g_pos: torch.Tensor, g_neg: torch.Tensor, dg: float, bidirectional: bool, max_pairs: int):
    """Stochastic rounding ``floor(req + u)`` of ``req`` (steps, ``(rows, k)`` contiguous: the columns ``cols`` of
    a ``(rows, width)`` array, or all of them with ``cols=None``; ``u`` its uniforms, same layout), written into
    ``n`` (int32, the array's shape, zeros; the caller checked ``|req| < 2^31 - 2``), and the :func:`split` of its
    pairs, in one scan. Returns what :func:`split` returns."""
    return _split_call("nm_round", req.dtype, max_pairs, n.numel(), req.shape[0], req.shape[1], width,
                       req.data_ptr(), u.data_ptr(), _ptr(cols), n.data_ptr(), g_pos.data_ptr(), g_neg.data_ptr(),
                       dg, int(bidirectional))


def split(n: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor, dg: float, bidirectional: bool,
          max_pairs: int):
    """The pairs of a sparse request and each device's share (``_pulse_kernel.c``, ``nm_split``): ``n`` the
    request's int32 counts, ``g_pos``/``g_neg`` the pair's conductances as read (contiguous CPU tensors of one
    float dtype, the shape of ``n``). Returns ``None`` when more than ``max_pairs`` pairs are pulsed (the dense
    path), else ``(pairs, (pos_idx, pos_n, pos_j), (neg_idx, neg_n, neg_j))``: the flat indices of the pulsed pairs
    (ascending) and, per device array, the flat indices of the devices that get pulses, their int64 counts and
    their positions in ``pairs``."""
    return _split_call("nm_split", g_pos.dtype, max_pairs, n.numel(), n.numel(), n.data_ptr(), g_pos.data_ptr(),
                       g_neg.data_ptr(), dg, int(bidirectional))


def add_at(total: torch.Tensor, idx: torch.Tensor, n: torch.Tensor) -> None:
    """``total[idx[i]] += n[i]`` in place (``total`` a contiguous int64 CPU tensor, viewed flat; ``idx``, ``n``
    int64; repeated indices add up), compiled. Raises if the library is not available."""
    lib = _lib()
    idx, n = idx.contiguous(), n.contiguous()
    lib.nm_add_at(idx.numel(), idx.data_ptr(), n.data_ptr(), total.data_ptr())
    total.view(-1)[:0].zero_()  # moves the version counter, as an in-place torch write does
