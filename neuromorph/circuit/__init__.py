"""Circuit substrate settling: the node ODE ``τ du/dt = z(g(u)) − u`` and its batched solvers.

>>> import torch
>>> from neuromorph.network import LayeredNetwork
>>> from neuromorph.circuit import Dopri5, SteadyState, ideal_field, settle, time_constant
>>> net = LayeredNetwork([20, 16, 4], dtype=torch.float64)
>>> tau = time_constant(1e-12, 1e-6)                      # 1 pF / 1 µS = 1 µs
>>> x = torch.rand(8, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> rhs = ideal_field(net, net.input_drive(x), tau=tau)
>>> res = settle(rhs, net.zero_state(8), solver=Dopri5(rtol=1e-6, atol=1e-8, dt_max=tau),
...              stop=SteadyState(tol=1e-9, t_max=100 * tau))
>>> bool(res.converged.all())
True

Modules: :mod:`.solvers` (vector fields, Euler/Heun/RK4/Bosh3/Dopri5, steady-state stop, ``settle``,
``solve_ivp_reference``), :mod:`.energy` (the Lyapunov energy of the node equation).
"""

from .energy import lyapunov_energy, lyapunov_rate
from .solvers import (
    RK4,
    Bosh3,
    Dopri5,
    Euler,
    FixedTime,
    Heun,
    NodeField,
    SettleResult,
    SteadyState,
    Tableau,
    VectorField,
    ideal_field,
    node_from_state,
    residual,
    settle,
    solve_ivp_reference,
    time_constant,
)

__all__ = ["RK4", "Bosh3", "Dopri5", "Euler", "FixedTime", "Heun", "NodeField", "SettleResult", "SteadyState",
           "Tableau", "VectorField", "ideal_field", "node_from_state", "residual", "settle", "solve_ivp_reference",
           "time_constant", "lyapunov_energy", "lyapunov_rate"]
