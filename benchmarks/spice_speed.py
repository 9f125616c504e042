"""Free-phase settling of one layer: neuromorph's solver against ngspice, time per sample at matched accuracy.

For n in 64, 128, 256: an n x n layer (``LayeredNetwork([n, n])``, squared error, the output in the state)
mapped onto TaOx/HfOx pairs with an ideal periphery (the model the netlist reproduces exactly), and a two-layer
n-n-n network (the layers coupled both ways, so the settling is a real fixed-point problem). neuromorph settles a
batch of inputs with explicit Euler at dt = τ until every node's ``|z − u|`` is below 1e-12 (weight units);
ngspice solves ``.op`` per sample in one loaded circuit (PySpice shared mode, inputs changed by ``alter``).
Matched accuracy: the max |ΔV(u)| between the two is printed next to the times.

    python benchmarks/spice_speed.py [--sizes 64 128 256] [--batch 64] [--spice-samples 8]

Writes ``benchmarks/results/spice_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from neuromorph.circuit import Euler, SteadyState, settle
from neuromorph.network import LayeredNetwork
from neuromorph.spice.netlist import build_netlist
from neuromorph.spice.run import ideal_hardware, steady_states

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--spice-samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for layers in ([[n, n] for n in args.sizes] + [[n, n, n] for n in args.sizes]):
        net = LayeredNetwork(layers, loss="mse", activation="half_hard_sigmoid", dtype=torch.float64, seed=0)
        hw = ideal_hardware(net, "taox_hfox")
        x = torch.rand(args.batch, layers[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            res = settle(hw.field(x), net.zero_state(args.batch), solver=Euler(hw.tau),
                         stop=SteadyState(1e-12, 5000 * hw.tau))
            times.append(time.perf_counter() - t0)
        nm_ms = 1e3 * min(times) / args.batch
        assert bool(res.converged.all()), "neuromorph did not settle"
        k = args.spice_samples
        nl = build_netlist(hw, x[0], analysis=None)
        t0 = time.perf_counter()
        ss = steady_states(nl, x[:k])
        sp_ms = 1e3 * (time.perf_counter() - t0) / k
        lay = nl.layout
        dv = max(float(np.abs(lay.to_volts(u[:k].numpy()) - v).max()) for u, v in zip(res.u, ss[0.0]["v_u"]))
        name = "-".join(map(str, layers))
        row = {"network": name, "elements": nl.layout.elements, "neuromorph_ms_per_sample": nm_ms,
               "ngspice_ms_per_sample": sp_ms, "ratio": sp_ms / nm_ms, "max_dV_V": dv,
               "euler_steps": res.n_steps, "batch": args.batch, "spice_samples": k}
        rows.append(row)
        print(f"{name:>12}: neuromorph {nm_ms:8.3f} ms/sample ({res.n_steps} Euler steps, batch {args.batch})  "
              f"ngspice {sp_ms:9.1f} ms/sample  ratio {sp_ms / nm_ms:8.0f}x  max |dV| {dv:.1e} V", flush=True)
    out = ROOT / "benchmarks/results/spice_speed.json"
    out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
