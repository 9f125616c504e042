"""The ``neuromorph`` command: ``train``, ``evaluate``, ``demo``, ``ep-vs-bptt``, ``curves``, ``angles``, ``device``."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from .config import ConfigError, apply_overrides, config_from_dict, load_config

__all__ = ["main"]


def _cmd_train(args) -> int:
    from .train import Trainer, check_run_dir

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"output.dir={_quote(args.out)}")
    cfg = load_config(args.config, overrides)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in the output directory and --overwrite replaces it: give one")
    check_run_dir(cfg.output.dir, resume=args.resume, overwrite=args.overwrite)  # before loading any data
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    hist = trainer.fit()
    if hist:
        best = max(h["test_acc"] for h in hist)
        print(f"final test accuracy {hist[-1]['test_acc']:.4f} (best {best:.4f}); run directory {cfg.output.dir}")
    return 0


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed {seed} is invalid: must be an integer in [0, 2^32 - 1]")


def _check_paths(args) -> None:
    """Path arguments with control characters (a newline) are refused: they make files nobody can name."""
    for name in ("out", "config", "checkpoint", "data_dir"):
        v = getattr(args, name, None)
        if isinstance(v, str) and any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"--{name.replace('_', '-')} {v!r} holds a control character (newline, tab, ...); "
                             "use a plain path")


def _cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .train import Trainer, evaluate, load_checkpoint, network_from_checkpoint

    ck = load_checkpoint(args.checkpoint)
    net, cfg = network_from_checkpoint(ck, device=args.device)
    # the run's own data (its data.n_train / data.n_test subsets): the accuracy the run reported
    ds = load_dataset(cfg.data.name, args.data_dir or cfg.data.dir or None, verify=cfg.data.verify,
                      n_train=cfg.data.n_train or None, n_test=cfg.data.n_test or None)
    t0 = time.perf_counter()
    if "hardware" in ck:  # a hardware run: its arrays in their trained state, read with their noise
        from .hil import hardware_from_checkpoint

        tr = hardware_from_checkpoint(ck, cfg, dataset=ds)
        x, y = tr.split(args.split)
        if args.split == "test" and ck.get("eval_generator") is not None:
            tr.hw.generator.set_state(ck["eval_generator"])  # the read noise of the run's own test evaluation
        m = tr.sub.evaluate(x, y)
        where = f"on {tr.hw.card.name} (simulated hardware)"
    else:
        tr = Trainer(replace(cfg, output=replace(cfg.output, checkpoint=False)), dataset=ds)
        x, y = tr.split(args.split)
        m = evaluate(net, x.to(net.device, net.dtype), y.to(net.device), cfg.ep.T, cfg.train.eval_batch_size,
                     cfg.ep.convergence_tol, cfg.ep.steady_tol or None)
        where = "(ideal reference)"
    print(f"{cfg.name} (epoch {ck['epoch'] + 1}) {where} on {cfg.data.name}/{args.split}: accuracy {m['acc']:.4f}  "
          f"error {100 * (1 - m['acc']):.2f}%  loss {m['loss']:.4f}  not converged {100 * m['nonconverged']:.2f}%  "
          f"({len(x)} examples, {time.perf_counter() - t0:.1f}s)")
    return 0


def _cmd_demo(args) -> int:
    from .plots import plot_learning_curves
    from .recipes import recipe_text
    from .train import Trainer

    data = apply_overrides(tomllib.loads(recipe_text("demo_digits")), list(args.set or []))
    base = config_from_dict(data)
    out = Path(args.out)
    runs = [("EP symmetric", {"algorithm": "ep"}, {"estimator": "symmetric"}),
            ("EP one-sided", {"algorithm": "ep"}, {"estimator": "one_sided"}),
            ("BPTT", {"algorithm": "bptt"}, {})]
    rows, histories = [], {}
    dataset = None
    for label, train_kw, ep_kw in runs:
        slug = label.lower().replace(" ", "-")
        cfg = replace(base, name=f"demo-{slug}", train=replace(base.train, **train_kw), ep=replace(base.ep, **ep_kw),
                      output=replace(base.output, dir=str(out / slug)))
        tr = Trainer(cfg, dataset=dataset, overwrite=True)  # the demo replaces its own earlier runs
        dataset = tr.dataset
        t0 = time.perf_counter()
        hist = tr.fit(log=None)
        wall = time.perf_counter() - t0
        histories[label] = hist
        rows.append((label, hist[-1]["test_acc"], max(h["test_acc"] for h in hist), hist[-1]["train_acc"], wall,
                     sum(h["samples_per_s"] for h in hist) / len(hist)))
        print(f"  {label:<13} done: test accuracy {hist[-1]['test_acc']:.4f} in {wall:.1f}s", flush=True)
    fig = plot_learning_curves(histories, out / "learning_curves.png",
                               title=f"digits, {'-'.join(map(str, base.model.layers))} ({base.model.loss})")
    print()
    print(f"{'run':<14}{'test acc':>10}{'best':>8}{'train acc':>11}{'time (s)':>10}{'samples/s':>11}")
    for label, acc, best, tr_acc, wall, sps in rows:
        print(f"{label:<14}{acc:>10.4f}{best:>8.4f}{tr_acc:>11.4f}{wall:>10.1f}{sps:>11.0f}")
    print(f"\nlearning curves: {fig}  (runs, metrics and checkpoints under {out}/)")
    return 0


def _cmd_ep_vs_bptt(args) -> int:
    import torch

    from .compare import ep_vs_bptt, plot_ep_vs_bptt
    from .train import Trainer, load_checkpoint, load_model_state

    for name in ("batch", "T", "K"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} {v} is invalid: must be an integer >= 1")
    if args.beta is not None and not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"--beta {args.beta} is invalid: must be a finite number > 0")
    _check_seed(args.seed)
    overrides = list(args.set or [])
    overrides += [f"ep.{k}={v}" for k, v in (("T", args.T), ("K", args.K), ("beta", args.beta)) if v is not None]
    cfg = load_config(args.config, overrides)
    ck = load_checkpoint(args.checkpoint) if args.checkpoint else None  # read before the data: fails fast
    tr = Trainer(cfg)
    if ck is not None:
        load_model_state(tr.net, ck["model"], f"checkpoint {args.checkpoint!r}")
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(tr.x_train.shape[0], generator=gen)[: args.batch]
    beta, T, K = cfg.ep.beta, cfg.ep.T, cfg.ep.K
    res = ep_vs_bptt(tr.net, tr.x_train[idx], tr.y_train[idx], T, K, beta)
    path = plot_ep_vs_bptt(res, args.out)
    print(f"free phase residual {res['free_residual']:.2e} (the comparison needs a converged free phase)")
    print(f"{'layer':<12}{'RMSE one-sided':>16}{'RMSE symmetric':>16}{'sign one-sided':>16}{'sign symmetric':>16}")
    for i, name in enumerate(res["names"]):
        print(f"{name:<12}{res['rmse']['one_sided'][i][-1]:>16.3g}{res['rmse']['symmetric'][i][-1]:>16.3g}"
              f"{res['sign_agreement']['one_sided'][i][-1]:>16.3f}{res['sign_agreement']['symmetric'][i][-1]:>16.3f}")
    print(f"(relative RMSE and sign agreement with BPTT at t = K = {K}); figure {path}, "
          f"numbers {path.with_suffix('.json')}")
    return 0


def _cmd_curves(args) -> int:
    from .plots import plot_curves

    path, summary = plot_curves(args.runs, args.out, label_by=args.label_by, title=args.title)
    print(f"{'label':<32}{'runs':>5}{'epochs':>7}{'test error (%)':>18}{'train error (%)':>17}")
    for label, s in summary.items():
        te, tr = s["test"], s["train"]
        print(f"{label:<32}{te['n']:>5}{int(te['epochs'][-1]):>7}{te['mean'][-1]:>11.2f} ± {te['std'][-1]:<4.2f}"
              f"{tr['mean'][-1]:>17.2f}")
    print(f"(last common epoch; std over runs)  figure {path} and {path.with_suffix('.svg')}")
    return 0


def _cmd_angles(args) -> int:
    from .plots import plot_angles

    path, summary = plot_angles(args.runs, args.out, label_by=args.label_by, title=args.title)
    for label, layers in summary.items():
        last = ", ".join(f"{s['mean'][-1]:.1f}" for s in layers)
        print(f"{label}: angles at epoch {int(layers[0]['epochs'][-1])} (synapse layers 2..{len(layers) + 1}): "
              f"{last} degrees")
    print(f"figure {path} and {path.with_suffix('.svg')}")
    return 0


def _cmd_compare(args) -> int:
    from .hil import compare

    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: the number of seeds must be an integer >= 1")

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"hardware.device={_quote(args.device)}")
    cfg = load_config(args.config, overrides)
    out = args.out or f"runs/compare/{cfg.name}-{Path(cfg.hardware.device).stem}"
    s = compare(cfg, out, resume=args.resume, seeds=args.seeds)
    spread = f" ± {100 * s['gap_std']:.2f} over {args.seeds} seeds" if args.seeds > 1 else ""
    print(f"\ntable {out}/comparison.md, numbers {out}/comparison.json, curves {out}/learning_curves.png "
          f"(gap {100 * s['gap']:+.2f}{spread} points)")
    return 0


def _cmd_cost(args) -> int:
    from .cost import run_cost

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"hardware.device={_quote(args.device)}")
    if args.technology:
        overrides.append(f"hardware.technology={_quote(args.technology)}")
    cfg = load_config(args.config, overrides)
    out = args.out or f"runs/cost/{cfg.name}-{Path(cfg.hardware.device).stem}"
    run_cost(cfg, out, args.batches)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuromorph", description="Equilibrium Propagation on simulated analog hardware.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a network from a TOML config")
    t.add_argument("--config", required=True, help="TOML config file (see configs/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 --set 'train.lr=[0.1,0.05]'")
    t.add_argument("--out", help="run directory (overrides output.dir)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint (changes "
                   "to epochs, decay_epochs beyond the epochs done, eval and data-location settings are applied and "
                   "recorded in resumes.jsonl; any other change is refused)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a run already in the output directory (default: refuse)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on its dataset")
    e.add_argument("checkpoint")
    e.add_argument("--split", choices=("test", "train"), default="test")
    e.add_argument("--data-dir", help="data directory (default: the checkpoint's, $NEUROMORPH_DATA, ../shared/data)")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("demo", help="EP (symmetric, one-sided) vs BPTT on scikit-learn's digits, with a plot")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the embedded demo config")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("ep-vs-bptt", help="EP updates vs truncated BPTT at every nudged step (Fig. 1d / 7)")
    c.add_argument("--config", required=True, help="TOML config (network, data, T, K, beta)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--checkpoint", help="load these weights instead of the initial ones")
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--beta", type=float, default=None)
    c.add_argument("--T", type=int, default=None)
    c.add_argument("--K", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="runs/ep_vs_bptt.png")
    c.set_defaults(func=_cmd_ep_vs_bptt)

    for name, func, help_, default in (
            ("curves", _cmd_curves, "learning curves of run directories, seeds averaged (Fig. 3/4)", "curves.png"),
            ("angles", _cmd_angles, "forward/backward weight angle per layer of unidirectional runs (Fig. 6)",
             "angles.png")):
        a = sub.add_parser(name, help=help_)
        a.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (metrics.jsonl, config.toml)")
        a.add_argument("--out", required=True, metavar="FIG.png",
                       help=f"figure path, e.g. runs/{default} (an .svg is written beside it)")
        a.add_argument("--label-by", choices=("name", "dir"), default="name",
                       help="group runs by config name (seeds averaged, default) or show each directory")
        a.add_argument("--title", default="")
        a.set_defaults(func=func)

    h = sub.add_parser("compare", help="train the ideal reference and the hardware model side by side")
    h.add_argument("--config", required=True, help="TOML config; its [hardware] section sets the periphery, "
                   "update and solver")
    h.add_argument("--device", help="device card: preset name or .toml path (overrides hardware.device)")
    h.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set hardware.adc_bits=8 --set hardware.adc_range=4")
    h.add_argument("--out", help="output directory (default runs/compare/<name>-<device>)")
    h.add_argument("--seeds", type=int, default=1, help="train N seeds of both sides, each with a control (the "
                   "reference with its initial weights moved by one ulp); the table gives mean ± std and whether the "
                   "gap is within the seed spread (default 1)")
    h.add_argument("--resume", action="store_true", help="continue both runs from their checkpoints (the hardware's "
                   "holds the device state: a killed comparison ends as an uninterrupted one would)")
    h.set_defaults(func=_cmd_compare)

    k = sub.add_parser("cost", help="energy, latency and area of training and inference on the simulated chip")
    k.add_argument("--config", required=True, help="TOML config file (see configs/)")
    k.add_argument("--device", help="device card: a preset name or a card TOML (overrides hardware.device)")
    k.add_argument("--technology", help="technology card: a name of device_models/technology/ or a TOML path "
                   "(overrides hardware.technology)")
    k.add_argument("--batches", type=int, default=2, help="training batches measured on the hardware (default 2)")
    k.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    k.add_argument("--out", help="output directory (default runs/cost/<name>-<device>)")
    k.set_defaults(func=_cmd_cost)

    from .devices.cli import add_parser as add_device_parser

    add_device_parser(sub)

    from .spice.cli import add_parsers as add_spice_parsers

    add_spice_parsers(sub)

    from .sweep import add_parsers as add_sweep_parsers

    add_sweep_parsers(sub)
    return p


_INTERRUPTED = {
    "train": "continue it with the same command and --resume (the last finished epoch's checkpoint is kept)",
    "compare": "continue it with the same command and --resume (each side's last finished epoch is kept, the "
               "hardware's with its device state)",
    "sweep": "run the same command again: finished and failed runs are kept (--retry-failed reruns the failed), "
             "the others run",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DatasetError
    from .runio import RunLocked, WriteFailed
    from .train import CheckpointError, RunExists, TrainingDiverged

    try:
        _check_paths(args)
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, TrainingDiverged, RunExists, RunLocked, WriteFailed,
            ValueError) as e:
        print(f"neuromorph {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `neuromorph ... | head`: the reader left; exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:  # a path that is a file, a full disk, no permission: one line naming the path
        if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
            msg = f"{e.filename!r}: a file is in the way where a directory is needed (Not a directory)"
        else:
            msg = f"{e.strerror or e}" + (f": {e.filename!r}" if e.filename else "")
        print(f"neuromorph {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args.command, "interrupted", 130)
    except SystemExit as e:  # SIGTERM, turned into SystemExit(143) by the commands that clean up on it
        if e.code == 143:
            return _interrupted(args.command, "terminated", 143)
        raise


def _interrupted(command: str, how: str, code: int) -> int:
    then = _INTERRUPTED.get(command, "nothing was lost but the unfinished work")
    print(f"neuromorph {command}: {how}; {then}", file=sys.stderr)
    return code

if __name__ == "__main__":
    sys.exit(main())
