"""The names a config may choose for the hardware substrate's strategies (strings live only at the TOML/CLI edge).

Kept apart from the implementations so that validating a config imports none of them: :mod:`neuromorph.hardware`
maps each name to its solver or update mode.
"""

SOLVERS = ("euler", "heun", "rk4", "bosh3", "dopri5")
"""Circuit settling: explicit Euler, Heun, RK4 (fixed step); Bogacki–Shampine 3(2), Dormand–Prince 5(4) (adaptive)."""

UPDATE_MODES = ("stochastic_rounding", "deterministic", "manhattan", "pulse_train", "mixed_precision", "tiki_taka",
                "ttv2")
"""Update requests → programming pulses (:meth:`neuromorph.hardware.HardwareNetwork.apply_update`);
``mixed_precision``: a digital accumulator per weight, a pulse when it passes the device's step (Nandakumar et al.
2020); ``tiki_taka``: a fast array takes the requests, one of its columns is read and transferred to the weight
array every ``hardware.tt_transfer_every`` updates (Gokmen & Haensch 2020); ``ttv2``: the same, the column reads
accumulated in a digital buffer that fires whole steps into the weight array (Gokmen 2021)."""
