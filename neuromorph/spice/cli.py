"""``neuromorph export-spice`` and ``neuromorph spice-check`` (registered by :mod:`neuromorph.cli`)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

__all__ = ["add_parsers", "check_checkpoint_model"]


def check_checkpoint_model(ck: dict, net, path, cfg) -> None:
    """Load a checkpoint read by :func:`neuromorph.train.load_checkpoint` into ``net`` (names, shapes and finite
    values checked by :func:`neuromorph.train.load_model_state`); its config must name the same
    ``model.activation`` as ``cfg``, since the netlist's output stage follows the config."""
    from ..train import CheckpointError, load_model_state

    where = f"checkpoint {str(path)!r}"
    load_model_state(net, ck["model"], where)
    act = ck["config"].get("model", {}).get("activation") if isinstance(ck["config"].get("model"), dict) else None
    if isinstance(act, str) and act != cfg.model.activation:
        raise CheckpointError(f"{where} was trained with model.activation = {act!r}, the config has "
                              f"{cfg.model.activation!r} (the netlist's output stage follows the config); use "
                              f"--set model.activation={act}")


def _finite_arg(flag: str, value, *, positive: bool = False, nonzero: bool = False) -> None:
    import math

    if not math.isfinite(value) or (positive and not value > 0) or (nonzero and value == 0):
        need = "a finite number > 0" if positive else "a finite number != 0" if nonzero else "a finite number"
        raise ValueError(f"{flag} {value!r}: {need} is required")


def _check_args(args, command: str) -> None:
    """The numeric options, before anything is loaded (ValueError naming the option, its value and the range)."""
    if args.sample < 0:
        raise ValueError(f"--sample {args.sample}: the first sample must be an integer >= 0")
    if args.beta is not None:
        # spice-check: the EP update divides by 2*beta (the +-beta phases)
        _finite_arg("--beta", args.beta, nonzero=command == "spice-check")
    if command == "export-spice":
        _finite_arg("--tran-tau", args.tran_tau, positive=True)
    else:
        if args.samples < 1:
            raise ValueError(f"--samples {args.samples}: the number of samples must be an integer >= 1")
        _finite_arg("--tol", args.tol, positive=True)


def _setup(args, ideal_periphery: bool):
    """(config, hardware network, x (B, n0), y (B,)) of the config's data split, weights from a checkpoint."""
    import sys

    from ..config import load_config
    from ..crossbar import Periphery
    from ..hil import hardware_from_config
    from ..train import CheckpointError, Trainer, load_checkpoint

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'hardware.device="{args.device}"')
    cfg = load_config(args.config, overrides)
    ref = Trainer(replace(cfg, output=replace(cfg.output, checkpoint=False)))
    net = ref.net
    ck = load_checkpoint(args.checkpoint) if args.checkpoint else None
    if ck is not None:
        check_checkpoint_model(ck, net, args.checkpoint, cfg)
    per = Periphery.ideal(v_read=cfg.hardware.v_read_volt) if ideal_periphery else None
    hw = hardware_from_config(cfg, net, per)
    if ck is not None and "hardware" in ck:  # a hardware run's trained conductances, exactly as programmed
        try:
            hw.load_state_dict(ck["hardware"], f"checkpoint {args.checkpoint!r}")
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {args.checkpoint!r}: its hardware state does not fit the config's "
                                  f"arrays ({e}); use the run's config (its config.toml)") from None
    x, y = (ref.x_test, ref.y_test) if args.split == "test" else (ref.x_train, ref.y_train)
    lo, n = args.sample, args.samples
    if not 0 <= lo < len(x):
        raise ValueError(f"--sample {lo}: the {args.split} split has {len(x)} samples (allowed: 0 to {len(x) - 1})")
    if lo + n > len(x):
        print(f"neuromorph {args.command}: note: --samples {n} from --sample {lo}: the {args.split} split has "
              f"{len(x)} samples; using the {len(x) - lo} from {lo} on", file=sys.stderr)
    return cfg, hw, x[lo:lo + n], y[lo:lo + n]


def _cmd_export(args) -> int:
    from .netlist import build_netlist

    _check_args(args, "export-spice")
    args.samples = 1
    cfg, hw, x, y = _setup(args, ideal_periphery=False)
    beta = args.beta if args.beta is not None else 0.0
    t0 = time.perf_counter()
    nl = build_netlist(hw, x[0], beta=beta, y=y[0], title=cfg.name, analysis=args.analysis,
                       tran=(min(1.0, args.tran_tau) * hw.tau / 50, args.tran_tau * hw.tau)
                       if args.analysis == "tran" else None)
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(nl.text)
    except OSError as e:
        raise ValueError(f"--out {str(out)!r} cannot be written: {e.strerror or e}") from None
    lay = nl.layout
    print(f"{out}: {lay.elements} elements, sizes {'-'.join(map(str, lay.sizes))}, {args.split} sample {args.sample}"
          f" (label {int(y[0])}), beta {beta}; g0 = {lay.g0:.4g} S, C = {lay.capacitance:.4g} F, tau = "
          f"{lay.tau:.4g} s, {lay.vunit:g} V per unit; written in {time.perf_counter() - t0:.2f} s")
    print(f"run it: ngspice -b {out}   (nudge: alter gnudge_<i> gain=<beta*g0>; inputs: alter vx_<j> dc=<V>)")
    return 0


def _cmd_check(args) -> int:
    import sys

    from .run import cross_check, spice_available

    _check_args(args, "spice-check")
    cfg, hw, x, y = _setup(args, ideal_periphery=True)  # every input checked first, then the environment
    ok, why = spice_available()
    if not ok:
        print(f"neuromorph spice-check: error: {why}", file=sys.stderr)
        return 2
    beta = args.beta if args.beta is not None else cfg.ep.beta
    res = cross_check(hw, x, y, beta, transient_check=not args.no_transient)
    print(f"{cfg.name}: {hw.card.name if hasattr(hw.card, 'name') else cfg.hardware.device}, ideal periphery, "
          f"beta = {beta}")
    for line in res.lines():
        print("  " + line)
    worst = max([res.max_dv_free, res.max_dv_nudged])
    passed = worst <= args.tol and max(res.update_rel.values()) <= 1e-5
    print(f"{'PASS' if passed else 'FAIL'} (steady states within {args.tol:g} V, EP updates within relative 1e-5)")
    return 0 if passed else 1


def add_parsers(sub) -> None:
    for name, func, help_ in (("export-spice", _cmd_export, "write the SPICE netlist of a network's settling circuit"),
                              ("spice-check", _cmd_check, "settle the same circuit with neuromorph and ngspice and "
                                                          "compare steady states, transients and EP updates")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="TOML config (squared-error loss, fully connected)")
        p.add_argument("--checkpoint", help="load these weights instead of the initial ones (a hardware run's "
                       "checkpoint: its trained conductances)")
        p.add_argument("--device", help="device card: preset name or .toml path (overrides hardware.device)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
        p.add_argument("--split", choices=("test", "train"), default="test")
        p.add_argument("--sample", type=int, default=0, help="first sample of the split (0 to its size - 1)")
        p.add_argument("--beta", type=float, default=None,
                       help="nudging, finite (export default 0: free phase; check default ep.beta, != 0)")
        if name == "export-spice":
            p.add_argument("--out", required=True, metavar="FILE.cir")
            p.add_argument("--analysis", choices=("op", "tran"), default="op")
            p.add_argument("--tran-tau", type=float, default=10.0, help="transient length in units of tau (> 0)")
        else:
            p.add_argument("--samples", type=int, default=4,
                           help="number of samples (>= 1; at most the rest of the split)")
            p.add_argument("--tol", type=float, default=1e-6, help="max |dV| [V] allowed (> 0)")
            p.add_argument("--no-transient", action="store_true")
        p.set_defaults(func=func)


