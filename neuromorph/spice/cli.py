"""``neuromorph export-spice`` and ``neuromorph spice-check`` (registered by :mod:`neuromorph.cli`)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

__all__ = ["add_parsers"]


def _setup(args, ideal_periphery: bool):
    """(config, hardware network, x (B, n0), y (B,)) of the config's data split, weights from a checkpoint."""
    from ..config import load_config
    from ..crossbar import Periphery
    from ..hil import hardware_from_config
    from ..train import Trainer, load_checkpoint

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'hardware.device="{args.device}"')
    cfg = load_config(args.config, overrides)
    ref = Trainer(replace(cfg, output=replace(cfg.output, checkpoint=False)))
    net = ref.net
    if args.checkpoint:
        net.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    per = Periphery.ideal(v_read=cfg.hardware.v_read_volt) if ideal_periphery else None
    hw = hardware_from_config(cfg, net, per)
    x, y = (ref.x_test, ref.y_test) if args.split == "test" else (ref.x_train, ref.y_train)
    lo, n = args.sample, args.samples
    if not 0 <= lo < len(x):
        raise ValueError(f"--sample {lo}: the {args.split} split has {len(x)} samples")
    return cfg, hw, x[lo:lo + n], y[lo:lo + n]


def _cmd_export(args) -> int:
    from .netlist import build_netlist

    args.samples = 1
    cfg, hw, x, y = _setup(args, ideal_periphery=False)
    beta = args.beta if args.beta is not None else 0.0
    t0 = time.perf_counter()
    nl = build_netlist(hw, x[0], beta=beta, y=y[0], title=cfg.name, analysis=args.analysis,
                       tran=(hw.tau / 50, args.tran_tau * hw.tau) if args.analysis == "tran" else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(nl.text)
    lay = nl.layout
    print(f"{out}: {lay.elements} elements, sizes {'-'.join(map(str, lay.sizes))}, {args.split} sample {args.sample}"
          f" (label {int(y[0])}), beta {beta}; g0 = {lay.g0:.4g} S, C = {lay.capacitance:.4g} F, tau = "
          f"{lay.tau:.4g} s, {lay.vunit:g} V per unit; written in {time.perf_counter() - t0:.2f} s")
    print(f"run it: ngspice -b {out}   (nudge: alter gnudge_<i> gain=<beta*g0>; inputs: alter vx_<j> dc=<V>)")
    return 0


def _cmd_check(args) -> int:
    import sys

    from .run import cross_check, spice_available

    ok, why = spice_available()
    if not ok:
        print(f"neuromorph spice-check: error: {why}", file=sys.stderr)
        return 2
    cfg, hw, x, y = _setup(args, ideal_periphery=True)
    beta = args.beta if args.beta is not None else cfg.ep.beta
    res = cross_check(hw, x, y, beta, transient_check=not args.no_transient)
    print(f"{cfg.name}: {hw.card.name if hasattr(hw.card, 'name') else cfg.hardware.device}, ideal periphery, "
          f"beta = {beta}")
    for line in res.lines():
        print("  " + line)
    worst = max([res.max_dv_free, res.max_dv_nudged])
    print(f"{'PASS' if worst <= args.tol and max(res.update_rel.values()) <= 1e-5 else 'FAIL'} "
          f"(steady states within {args.tol:g} V, EP updates within relative 1e-5)")
    return 0 if worst <= args.tol else 1


def add_parsers(sub) -> None:
    for name, func, help_ in (("export-spice", _cmd_export, "write the SPICE netlist of a network's settling circuit"),
                              ("spice-check", _cmd_check, "settle the same circuit with neuromorph and ngspice and "
                                                          "compare steady states, transients and EP updates")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="TOML config (squared-error loss, fully connected)")
        p.add_argument("--checkpoint", help="load these weights instead of the initial ones")
        p.add_argument("--device", help="device card: preset name or .toml path (overrides hardware.device)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
        p.add_argument("--split", choices=("test", "train"), default="test")
        p.add_argument("--sample", type=int, default=0, help="first sample of the split")
        p.add_argument("--beta", type=float, default=None,
                       help="nudging (export default 0: free phase; check default ep.beta)")
        if name == "export-spice":
            p.add_argument("--out", required=True, metavar="FILE.cir")
            p.add_argument("--analysis", choices=("op", "tran"), default="op")
            p.add_argument("--tran-tau", type=float, default=10.0, help="transient length in units of tau")
        else:
            p.add_argument("--samples", type=int, default=4, help="number of samples")
            p.add_argument("--tol", type=float, default=1e-6, help="max |dV| [V] allowed")
            p.add_argument("--no-transient", action="store_true")
        p.set_defaults(func=func)


