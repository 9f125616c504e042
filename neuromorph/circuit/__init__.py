"""Circuit substrate settling: the node ODE ``τ du/dt = z(g(u)) − u`` and its batched solvers.

>>> import torch
>>> from neuromorph.network import LayeredNetwork
>>> from neuromorph.circuit import Dopri5, SteadyState, settle, time_constant
>>> from neuromorph.dynamics import ideal_field
>>> net = LayeredNetwork([20, 16, 4], dtype=torch.float64)
>>> tau = time_constant(1e-12, 1e-6)                      # 1 pF / 1 µS = 1 µs
>>> x = torch.rand(8, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> rhs = ideal_field(net, net.input_drive(x), tau=tau)
>>> res = settle(rhs, net.zero_state(8), solver=Dopri5(rtol=1e-6, atol=1e-8, dt_max=tau),
...              stop=SteadyState(tol=1e-9, t_max=100 * tau))
>>> bool(res.converged.all())
True

Module :mod:`.solvers`: vector fields, Euler/Heun/RK4/Bosh3/Dopri5, steady-state stop, ``settle``,
``solve_ivp_reference``. The solvers are generic: they know a node equation only through its
:class:`NodeField` (a target ``z(s)``, an output stage ``g``, a time constant) and import no network model. The
ideal network's node equation is :func:`neuromorph.dynamics.ideal_field`, the crossbars' is
:meth:`neuromorph.hardware.HardwareNetwork.field`; the Lyapunov energy of the ideal network's node equation is in
:mod:`neuromorph.energy`.
"""

from .solvers import (
    RK4,
    Bosh3,
    ConvergenceError,
    Dopri5,
    Euler,
    FixedTime,
    Heun,
    NodeField,
    SettleResult,
    SteadyState,
    Tableau,
    VectorField,
    node_from_state,
    residual,
    settle,
    solve_ivp_reference,
    time_constant,
)

__all__ = ["RK4", "Bosh3", "ConvergenceError", "Dopri5", "Euler", "FixedTime", "Heun", "NodeField", "SettleResult",
           "SteadyState",
           "Tableau", "VectorField", "node_from_state", "residual", "settle", "solve_ivp_reference",
           "time_constant"]
