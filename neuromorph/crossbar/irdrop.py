r"""IR drop: nodal analysis of a crossbar tile's resistive grid.

The grid
--------
A tile is an ``R x C`` array of cells (``R`` input / word lines, ``C`` output / bit lines; a differential tile has
two bit lines per output, see :mod:`neuromorph.crossbar.tile`). Every cell ``(r, c)`` is a conductance ``g[r, c]``
[S] between its word-line node ``p[r, c]`` and its bit-line node ``q[r, c]``.

* Word line ``r``: nodes ``p[r, 0] ... p[r, C-1]`` joined by segments of resistance ``r_row`` [Ω]; the driver (a DAC
  in the forward read, a virtual-ground TIA in the transpose read) at voltage ``u_r`` sits at the ``c = 0`` end,
  one segment ``r_row`` before ``p[r, 0]``.
* Bit line ``c``: nodes ``q[0, c] ... q[R-1, c]`` joined by segments ``r_col`` [Ω]; its periphery (a virtual-ground
  TIA in the forward read, a driver in the transpose read) at voltage ``w_c`` sits at the ``r = R-1`` end, one
  segment ``r_col`` after ``q[R-1, c]``.

Kirchhoff's current law at every node gives the linear system (conductance / nodal matrix ``A``, SPD)::

    A v = M [u; w],     A = L_lines + L_cells + diag(boundary conductances)

which depends only on the cell and line conductances, not on the drive voltages: it is factorised once per
conductance state (``scipy.sparse.linalg.splu``) and reused for every input of a batch, for the forward
(``u`` = DAC voltages, ``w = 0``) and for the transpose read (``u = 0``, ``w`` = drive voltages). A zero line
resistance merges the line's nodes with its driver (they become fixed voltages and are eliminated).

Sensed currents (by KCL all current entering a sensed line leaves through its TIA):

    forward:    I_c = Σ_r g[r, c] (V_p[r, c] - V_q[r, c])    (into the TIA of bit line c)  [A]
    transpose:  I_r = Σ_c g[r, c] (V_q[r, c] - V_p[r, c])    (into the TIA of word line r) [A]

With ``r_row = r_col = 0`` these are ``gᵀ u`` and ``g w``: the ideal products.

Two solvers: :class:`NodalSolver` (exact, sparse LU, float64, CPU) and :func:`solve_iterative` (torch, any device,
batched, vectorised over cells and inputs): the fixed point of the line equations written with cumulative sums —
the current through a word-line segment is the sum of the cell currents downstream of it, so

    V_p[r, c] = u_r - r_row Σ_{k<=c} Σ_{c'>=k} I[r, c'],     V_q[r, c] = w_c + r_col Σ_{k>=r} Σ_{r'<=k} I[r', c],

with ``I = g (V_p - V_q)``, iterated (Gauss-Seidel: word lines, then bit lines) until the largest voltage change is
below ``tol`` (at least 8 machine epsilons of the dtype) times the largest drive voltage. It converges when the line
drops are a small fraction of the drive (roughly ``max(r_row, r_col) · g_max · N^2 < 1`` for an N x N tile: the usual
operating regime); otherwise it raises and the exact solver should be used.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import splu

__all__ = ["NodalSolver", "solve_iterative", "currents_from_nodes"]


class NodalSolver:
    """Exact nodal solution of one tile's grid (see the module docstring), factorised once for conductances ``g``.

    Parameters: ``g`` [S], shape ``(R, C)`` (numpy or torch; converted to float64); ``r_row``, ``r_col`` [Ω] >= 0.
    """

    def __init__(self, g, r_row: float, r_col: float) -> None:
        g = np.asarray(g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else g, dtype=np.float64)
        if g.ndim != 2:
            raise ValueError(f"g must be a 2-D array (R, C) of conductances, got shape {g.shape}")
        if (g < 0).any() or not np.isfinite(g).all():
            raise ValueError(f"cell conductances must be finite and >= 0 S (min {g.min():g})")
        if r_row < 0 or r_col < 0:
            raise ValueError(f"line resistances must be >= 0 ohm, got r_row = {r_row}, r_col = {r_col}")
        R, C = g.shape
        self.shape = (R, C)
        self.g = g
        self.r_row, self.r_col = float(r_row), float(r_col)
        n = R * C
        pid = np.arange(n).reshape(R, C)
        qid = n + pid
        # edges (a, b, conductance)
        ea, eb, ew = [pid.ravel()], [qid.ravel()], [g.ravel()]
        if r_row > 0:
            ea.append(pid[:, :-1].ravel())
            eb.append(pid[:, 1:].ravel())
            ew.append(np.full(R * (C - 1), 1.0 / r_row))
        if r_col > 0:
            ea.append(qid[:-1, :].ravel())
            eb.append(qid[1:, :].ravel())
            ew.append(np.full((R - 1) * C, 1.0 / r_col))
        a, b, w = np.concatenate(ea), np.concatenate(eb), np.concatenate(ew)
        N = 2 * n
        deg = np.bincount(a, weights=w, minlength=N) + np.bincount(b, weights=w, minlength=N)
        # boundary: conductance from a node to its driver / TIA (drive index: 0..R-1 word lines, R..R+C-1 bit lines)
        bnode, bdrive, bw = [], [], []
        if r_row > 0:
            bnode.append(pid[:, 0])
            bdrive.append(np.arange(R))
            bw.append(np.full(R, 1.0 / r_row))
        if r_col > 0:
            bnode.append(qid[R - 1, :])
            bdrive.append(R + np.arange(C))
            bw.append(np.full(C, 1.0 / r_col))
        if bnode:
            bn, bd, bwv = np.concatenate(bnode), np.concatenate(bdrive), np.concatenate(bw)
            deg = deg + np.bincount(bn, weights=bwv, minlength=N)
            Bdrive = sp.csr_matrix((bwv, (bn, bd)), shape=(N, R + C))
        else:
            Bdrive = sp.csr_matrix((N, R + C))
        K = sp.csr_matrix((np.concatenate([-w, -w]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(N, N))
        K = K + sp.diags(deg)
        # fixed nodes (lines without resistance are at their driver's voltage)
        fixed = np.zeros(N, dtype=bool)
        fnode, fdrive = [], []
        if r_row == 0:
            fixed[:n] = True
            fnode.append(pid.ravel())
            fdrive.append(np.repeat(np.arange(R), C))
        if r_col == 0:
            fixed[n:] = True
            fnode.append(qid.ravel())
            fdrive.append(R + np.tile(np.arange(C), R))
        if fnode:
            fn, fd = np.concatenate(fnode), np.concatenate(fdrive)
            self._P = sp.csr_matrix((np.ones(fn.size), (fn, fd)), shape=(N, R + C))
        else:
            self._P = sp.csr_matrix((N, R + C))
        self._free = np.flatnonzero(~fixed)
        fixed_idx = np.flatnonzero(fixed)
        self.n_unknowns = int(self._free.size)
        if self.n_unknowns:
            Kf = K[self._free]
            A = Kf[:, self._free].tocsc()
            self._M = (Bdrive[self._free] - Kf[:, fixed_idx] @ self._P[fixed_idx]).tocsr()
            self._lu = splu(A)
        else:
            self._M = None
            self._lu = None

    def node_voltages(self, drive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node voltages for drive voltages ``drive`` of shape ``(B, R + C)`` ([u, w] per input) [V].

        Returns ``(V_p, V_q)``, each ``(B, R, C)`` [V]."""
        R, C = self.shape
        drive = np.asarray(drive, dtype=np.float64)
        if drive.ndim != 2 or drive.shape[1] != R + C:
            raise ValueError(f"drive must have shape (B, {R + C}), got {drive.shape}")
        V = (self._P @ drive.T)  # (N, B), fixed nodes
        if self._lu is not None:
            V[self._free] = self._lu.solve(np.ascontiguousarray(self._M @ drive.T))
        B = drive.shape[0]
        n = R * C
        vp = V[:n].T.reshape(B, R, C)
        vq = V[n:].T.reshape(B, R, C)
        return vp, vq

    def forward(self, u: np.ndarray) -> np.ndarray:
        """Forward read: word lines driven at ``u`` (B, R) [V], bit lines at virtual ground -> ``I_c`` (B, C) [A]."""
        u = np.asarray(u, dtype=np.float64)
        drive = np.concatenate([u, np.zeros((u.shape[0], self.shape[1]))], axis=1)
        vp, vq = self.node_voltages(drive)
        return (self.g * (vp - vq)).sum(axis=1)

    def transpose(self, w: np.ndarray) -> np.ndarray:
        """Transpose read: bit lines driven at ``w`` (B, C) [V], word lines at virtual ground -> ``I_r`` (B, R) [A]."""
        w = np.asarray(w, dtype=np.float64)
        drive = np.concatenate([np.zeros((w.shape[0], self.shape[0])), w], axis=1)
        vp, vq = self.node_voltages(drive)
        return (self.g * (vq - vp)).sum(axis=2)


def currents_from_nodes(g: torch.Tensor, vp: torch.Tensor, vq: torch.Tensor, direction: str) -> torch.Tensor:
    """Sensed currents [A] from node voltages: bit-line currents ``(B, C)`` (forward) or word-line currents
    ``(B, R)`` (transpose)."""
    i_cell = g * (vp - vq)
    return i_cell.sum(-2) if direction == "forward" else -i_cell.sum(-1)


def solve_iterative(g: torch.Tensor, r_row: float, r_col: float, u: torch.Tensor, w: torch.Tensor, *,
                    tol: float = 1e-12, max_iter: int = 2000) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fixed-point IR-drop solution (module docstring), vectorised over cells and the batch.

    ``g`` (R, C) [S]; ``u`` (B, R) word-line drive [V]; ``w`` (B, C) bit-line drive [V]. Returns ``(V_p, V_q,
    iterations)`` with node voltages of shape (B, R, C). Raises RuntimeError if not converged in ``max_iter``.
    """
    if r_row < 0 or r_col < 0:
        raise ValueError(f"line resistances must be >= 0 ohm, got r_row = {r_row}, r_col = {r_col}")
    B = u.shape[0]
    R, C = g.shape
    u3 = u[:, :, None]
    w3 = w[:, None, :]
    vp = u3.expand(B, R, C).clone()
    vq = w3.expand(B, R, C).clone()
    if r_row == 0 and r_col == 0:
        return vp, vq, 0
    scale = max(float(u.abs().max()) if u.numel() else 0.0, float(w.abs().max()) if w.numel() else 0.0)
    if scale == 0.0:
        return vp, vq, 0
    thresh = max(tol, 8 * torch.finfo(g.dtype).eps) * scale  # float32 cannot resolve 1e-12
    for it in range(1, max_iter + 1):
        delta = 0.0
        if r_row > 0:
            i_cell = g * (vp - vq)
            seg = i_cell.flip(-1).cumsum(-1).flip(-1)  # current in the segment feeding node c from the driver side
            new = u3 - r_row * seg.cumsum(-1)
            delta = float((new - vp).abs().max())
            vp = new
        if r_col > 0:
            i_cell = g * (vp - vq)
            seg = i_cell.cumsum(-2)  # current in the segment below node r (towards the TIA at r = R-1)
            new = w3 + r_col * seg.flip(-2).cumsum(-2).flip(-2)
            delta = max(delta, float((new - vq).abs().max()))
            vq = new
        if not delta == delta or delta > 1e6 * scale:  # NaN or divergence
            break
        if delta <= thresh:
            return vp, vq, it
    rg = max(r_row, r_col) * float(g.max()) * max(R, C) ** 2
    raise RuntimeError(f"iterative IR-drop solver did not converge in {max_iter} iterations (r·g_max·N² = {rg:.3g}; "
                       "it needs this well below 1): use Periphery(ir_solver='exact')")
