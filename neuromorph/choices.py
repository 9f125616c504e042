"""The names a config may choose for the hardware substrate's strategies (strings live only at the TOML/CLI edge).

Kept apart from the implementations so that validating a config imports none of them: :mod:`neuromorph.hardware`
maps each name to its solver or update mode.
"""

SOLVERS = ("euler", "heun", "rk4", "bosh3", "dopri5")
"""Circuit settling: explicit Euler, Heun, RK4 (fixed step); Bogacki–Shampine 3(2), Dormand–Prince 5(4) (adaptive)."""

UPDATE_MODES = ("stochastic_rounding", "deterministic", "manhattan", "pulse_train", "mixed_precision")
"""Update requests → programming pulses (:meth:`neuromorph.hardware.HardwareNetwork.apply_update`);
``mixed_precision``: a digital accumulator per weight, a pulse when it passes the device's step (Nandakumar et al.
2020)."""
