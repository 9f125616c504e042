"""``neuromorph device ...``: list, show, plot and fit device cards.

``add_parser(subparsers)`` registers the ``device`` command on the main parser's subparsers; each handler takes the
parsed arguments and returns an exit code (errors raise :class:`DeviceCardError` / ``ValueError``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from .cards import PARAMETERS, STEP_MODELS, DeviceCard, dump_card, list_presets, load_card, preset_dir
from .models import pulse_response

__all__ = ["add_parser", "cmd_list", "cmd_show", "cmd_plot", "cmd_fit", "plot_pulse_response"]

_D2D = ("dw_min_dtod", "up_down_dtod", "w_max_dtod", "w_min_dtod", "gamma_up_dtod", "gamma_down_dtod", "nl_dtod",
        "g_min_dtod", "g_max_dtod", "stuck_at_min_frac", "stuck_at_max_frac")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``device`` (subcommands list, show, plot, fit) on ``subparsers``."""
    p = subparsers.add_parser("device", help="device cards: list, show, plot the pulse response, fit to data",
                              description="Inspect the memristive device cards of device_models/ (or your own "
                                          ".toml card) and fit a card to a measured pulse response.")
    sub = p.add_subparsers(dest="device_command", required=True)

    s = sub.add_parser("list", help="list the preset device cards")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="parameters of a card, with units and sources")
    s.add_argument("preset", help="preset name (see 'neuromorph device list') or path to a .toml card")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("plot", help="pulse response: potentiation then depression, with cycle-to-cycle spread")
    s.add_argument("preset", help="preset name or path to a .toml card")
    s.add_argument("--out", help="output file (PNG; an SVG is written next to it); default "
                                 "<preset>_pulse_response.png")
    s.add_argument("--pulses", type=int, default=0, help="pulses per direction (default: the card's levels)")
    s.add_argument("--devices", type=int, default=20, help="repetitions for the spread band (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("fit", help="fit a card to a measured pulse response CSV (pulse,conductance_S[,direction])")
    s.add_argument("csv", help="CSV with columns pulse, conductance_S and optionally direction (up/down)")
    s.add_argument("--model", required=True, choices=("neurosim", "soft_bounds", "linear_step"))
    s.add_argument("--out", help="write the fitted card to this .toml file")
    s.add_argument("--levels", type=int, help="neurosim: levels, an integer >= 2 (default: pulses of the first "
                                               "potentiation / depression run)")
    s.add_argument("--objective", choices=("one_step", "trajectory"), default="one_step",
                   help="one_step (default, single noisy devices) or trajectory (averaged curves)")
    s.add_argument("--name", help="name of the fitted device (default: the CSV file name)")
    s.add_argument("--plot", metavar="FILE.png", help="draw the fit over the data into this figure (default with "
                                                     "--out: <out>_fit.png next to the card)")
    s.set_defaults(func=cmd_fit)
    return p


# ---------------------------------------------------------------------- formatting
def _si(x: float, unit: str) -> str:
    if x == 0:
        return f"0 {unit}"
    for f, pre in ((1e-15, "f"), (1e-12, "p"), (1e-9, "n"), (1e-6, "u"), (1e-3, "m"), (1.0, ""), (1e3, "k"),
                   (1e6, "M"), (1e9, "G")):
        if abs(x) < f * 1000:
            return f"{x / f:.4g} {pre}{unit}"
    return f"{x:.4g} {unit}"


def _fmt_value(card: DeviceCard, key: str) -> str:
    spec = PARAMETERS[key]
    v = getattr(card, key)
    if spec.kind == "bool":
        return "true" if v else "false"
    if spec.kind == "conductance":
        return f"{_si(v, 'S')}  (R = {_si(1 / v, 'ohm')})" if v > 0 else "0 S"
    if spec.kind == "time":
        return _si(v, "s")
    if spec.kind == "energy":
        return _si(v, "J")
    if spec.kind == "voltage":
        return f"{v:g} V"
    if spec.kind == "range_fraction":
        extra = f" = {v * card.w_range:g} w" if card.model in STEP_MODELS else ""
        return f"{v:g} of range{extra}"
    if spec.kind == "gmax_fraction":
        return f"{v:g} of G_max"
    if spec.kind == "count":
        return f"{int(v)} levels"
    return f"{v:g}"


def cmd_list(args) -> int:
    names = list_presets()
    if not names:
        print(f"no device cards in {preset_dir()}")
        return 0
    print(f"{'preset':<12} {'model':<14} {'levels':>7} {'on/off':>7} {'G_max':>10}  device")
    for n in names:
        c = load_card(n)
        lv = str(c.n_states) if c.n_states else "inf"
        print(f"{n:<12} {c.model:<14} {lv:>7} {c.on_off_ratio:>7.3g} {_si(c.g_max, 'S'):>10}  {c.name}")
    print(f"\n{len(names)} cards in {preset_dir()}; 'neuromorph device show NAME' for parameters and sources")
    return 0


def cmd_show(args) -> int:
    c = load_card(args.preset)
    print(f"{c.name}  (model: {c.model})")
    for k in ("description", "citation", "source", "notes"):
        if getattr(c, k):
            print(f"  {k:<12} {getattr(c, k)}")
    for r in c.references:
        print(f"  {'reference':<12} {r}")
    print("\nparameters (0 = off):")
    for key, *_ in c.parameter_items():
        src = c.provenance_of(key)
        print(f"  {key:<22} {_fmt_value(c, key):<34} {PARAMETERS[key].doc}")
        if src:
            print(f"  {'':<22} source: {src}")
    print("\nderived:")
    lv = c.n_states
    print(f"  {'n_states':<22} {lv if lv else 'continuous'}")
    print(f"  {'on/off ratio':<22} {c.on_off_ratio:.4g}")
    print(f"  {'dg_nominal':<22} {_si(c.dg_nominal, 'S')} (nominal step)")
    if c.model in STEP_MODELS:
        print(f"  {'g_ref (w = 0)':<22} {_si(c.g_ref, 'S')}; g = g_ref + w * {_si(c.g_range / c.w_range, 'S')}")
    if c.model == "neurosim":
        from .neurosim import param_a

        print(f"  {'A_LTP, A_LTD':<22} {param_a(c.nl_ltp, c.max_pulses):.6g}, "
              f"{param_a(c.nl_ltd, c.max_pulses_down):.6g} pulses (from the NL labels)")
    unver = [k for k, s in c.provenance if s.startswith("UNVERIFIED")]
    if unver:
        print(f"\nunverified values: {', '.join(unver)}")
    return 0


#: Bounds of ``device plot``: pulses per direction, repetitions, and their product (the traces hold
#: 3 x (2 pulses + 1) x devices float64 values; 2e6 keeps them under ~100 MB and the run to seconds).
MAX_PLOT_PULSES = 100_000
MAX_PLOT_DEVICES = 10_000
MAX_PLOT_PULSES_X_DEVICES = 2_000_000


def check_plot_size(pulses: int, devices: int, *, card_levels: bool = False) -> None:
    """Refuse a pulse-response plot whose size is negative, zero or too large (ValueError naming the value);
    ``card_levels``: ``pulses`` is the card's default, not the user's --pulses."""
    for flag, v in (("--pulses", pulses), ("--devices", devices)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{flag} must be an integer, not {v!r}")
    if not 0 <= pulses <= MAX_PLOT_PULSES:
        raise ValueError(f"--pulses {pulses}: allowed are 1 to {MAX_PLOT_PULSES} pulses per direction (0 = the "
                         "card's number of levels)")
    if not 1 <= devices <= MAX_PLOT_DEVICES:
        raise ValueError(f"--devices {devices}: allowed are 1 to {MAX_PLOT_DEVICES} repetitions")
    if pulses * devices > MAX_PLOT_PULSES_X_DEVICES:
        what = f"{pulses} pulses (the card's levels)" if card_levels else f"--pulses {pulses}"
        raise ValueError(f"{what} x --devices {devices} = {pulses * devices}: at most "
                         f"{MAX_PLOT_PULSES_X_DEVICES} pulses x devices per plot; lower --devices or --pulses")


def plot_pulse_response(card: DeviceCard, out: str | Path, *, pulses: int = 0, devices: int = 20,
                        seed: int = 0, label: str = "") -> list[Path]:
    """Write the pulse-response figure (PNG and SVG): noise-free curve, mean and +-1 sigma cycle-to-cycle band of
    ``devices`` repetitions of the nominal device, and a few devices with device-to-device variation."""
    import matplotlib.pyplot as plt

    check_plot_size(pulses, devices)
    n = pulses or (card.n_states if 0 < card.n_states <= 20000 else 1000)
    check_plot_size(n, devices, card_levels=not pulses)
    gen = torch.Generator().manual_seed(seed)
    clean = pulse_response(card.ideal(), n, n, generator=gen)[:, 0]
    nominal = replace(card, **{k: 0.0 for k in _D2D})
    c2c = pulse_response(nominal, n, n, n_devices=devices, generator=gen)
    d2d = pulse_response(card, n, n, n_devices=min(5, devices), generator=gen)
    scale, unit = 1.0, "S"
    for f, u in ((1e-12, "pS"), (1e-9, "nS"), (1e-6, "uS"), (1e-3, "mS")):
        if card.g_max < f * 1000:
            scale, unit = f, u
            break
    unit_label = unit.replace("u", "\u00b5")
    x = torch.arange(2 * n + 1).numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i in range(d2d.shape[1]):
        ax.plot(x, d2d[:, i].numpy() / scale, color="C1", lw=0.5, alpha=0.45, zorder=1,
                label="devices with d2d variation" if i == 0 else None)
    mean = c2c.mean(1).numpy() / scale
    std = c2c.std(1).numpy() / scale if devices > 1 else 0 * mean
    ax.fill_between(x, mean - std, mean + std, color="C0", alpha=0.35, zorder=2,
                    label=f"\u00b11\u03c3 cycle-to-cycle ({devices} runs, nominal device)")
    ax.plot(x, mean, color="C0", lw=1.5, zorder=3, label="mean")
    ax.plot(x, clean.numpy() / scale, color="k", ls="--", lw=1, zorder=4, label="noise-free model")
    ax.axvline(n, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("pulse number (potentiation, then depression)")
    ax.set_ylabel(f"conductance G ({unit_label})")
    ax.set_title(label or f"{card.name} ({card.model})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        out = out.with_suffix(".png")
    png, svg = out.with_suffix(".png"), out.with_suffix(".svg")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        fig.savefig(svg)
    except OSError as e:
        raise ValueError(f"{out}: cannot write the figure ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return [png, svg]


def cmd_plot(args) -> int:
    check_plot_size(args.pulses, args.devices)
    card = load_card(args.preset)
    stem = Path(str(args.preset)).stem if str(args.preset).endswith(".toml") else str(args.preset)
    out = args.out or f"{stem}_pulse_response.png"
    paths = plot_pulse_response(card, out, pulses=args.pulses, devices=args.devices, seed=args.seed)
    print(f"pulse response of {card.name}: {paths[0]} and {paths[1]}")
    return 0


def cmd_fit(args) -> int:
    import sys

    from .fit import MAX_LEVELS, MIN_LEVELS, fit_csv, plot_fit

    if args.levels is not None and not MIN_LEVELS <= args.levels <= MAX_LEVELS:
        raise ValueError(f"--levels {args.levels}: the number of levels (pulses from G_min to G_max) must be an "
                         f"integer from {MIN_LEVELS} to {MAX_LEVELS}")

    def progress(msg: str) -> None:
        print(f"neuromorph device fit: {msg}", file=sys.stderr, flush=True)

    res = fit_csv(args.csv, args.model, levels=args.levels, name=args.name, objective=args.objective,
                  progress=progress)
    print(f"fit of {args.csv} with the {args.model} model ({res.n_points} points, objective {args.objective}): "
          f"rmse {_si(res.rmse, 'S')}")
    for note in res.notes:
        print(f"  {note}")
    for k, v in res.params.items():
        se = res.stderr.get(k)
        print(f"  {k:<16} {v:.6g}" + (f" +- {se:.2g}" if se is not None else ""))
    if res.quality:
        print("fit quality (model curve against the data, per direction):")
        for label, q in res.quality.items():
            print(f"  {label:<5} R^2 {q['r2']:.4f}   RMSE {_si(q['rmse'], 'S')} = {100 * q['rmse_rel']:.3g}% of the "
                  f"fitted range   ({q['n']} points)")
    for w in res.warnings:
        print(f"neuromorph device fit: warning: {w}", file=sys.stderr)
    if res.warnings:
        print(f"{len(res.warnings)} warning(s): see above (stderr)")
    fig = args.plot or (str(Path(args.out).with_name(Path(args.out).stem + "_fit.png")) if args.out else None)
    if fig:
        print(f"figure of the fit: {plot_fit(res, fig)}")
    if args.out:
        path = dump_card(res.card, args.out, header=f"Fitted by 'neuromorph device fit {args.csv} --model "
                                                     f"{args.model}'; check the values before use.")
        print(f"card written to {path}")
    return 0
