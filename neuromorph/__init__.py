"""neuromorph: an analog neuromorphic hardware simulator that trains networks with Equilibrium Propagation.

The public Python API (a guide with examples that run: ``docs/python_api.md``)::

    import neuromorph as nm

    cfg = nm.config_from_dict({"model": {"layers": [64, 32, 10]}, "train": {"epochs": 2},
                               "hardware": {"device": "taox_hfox"}, "output": {"dir": "runs/api"}})
    history = nm.Trainer(cfg).fit()                       # the ideal reference (PyTorch)
    summary = nm.hil.compare(cfg, "runs/api-compare")     # the reference and the hardware of cfg.hardware

``import neuromorph`` is cheap: it imports neither torch nor any submodule. A public name (``__all__``) is imported
from its module the first time it is used, ``neuromorph.__version__`` is read on first use, and
``neuromorph.<submodule>`` (e.g. ``neuromorph.hil``) imports that submodule. Everything else stays importable from
its module (``from neuromorph.spice.run import cross_check``). Note that ``neuromorph.compare`` is the EP-vs-BPTT
module (``ep_vs_bptt``); the comparison of the ideal reference with the hardware is ``neuromorph.hil.compare``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads each name on first use
    from .config import (
        ConfigError,
        DataConfig,
        EPConfig,
        HardwareConfig,
        ModelConfig,
        OutputConfig,
        RunConfig,
        TrainConfig,
        config_from_dict,
        config_to_dict,
        dump_toml,
        load_config,
    )
    from .cost import CostReport, Technology, load_technology, measure_cost
    from .crossbar import CrossbarLayer, CrossbarTile, DifferentialArray, Periphery
    from .data import Dataset, DatasetError, load_dataset
    from .devices import (
        DeviceArray,
        DeviceCard,
        DeviceCardError,
        card_to_toml,
        dump_card,
        list_presets,
        load_card,
        pulse_response,
    )
    from .devices.cards import card_from_dict
    from .estimators import OneSided, RandomSign, Symmetric, ep_gradients, make_estimator
    from .hardware import HardwareNetwork
    from .hil import (
        HardwareSubstrate,
        HardwareTrainer,
        hardware_from_checkpoint,
        hardware_from_config,
        periphery_from_config,
    )
    from .network import LayeredNetwork
    from .spice import build_netlist, export_netlist
    from .sweep import SweepError, load_sweep, read_results, run_sweep
    from .train import (
        CheckpointError,
        IdealSubstrate,
        RunExists,
        Trainer,
        TrainingDiverged,
        build_network,
        evaluate,
        load_checkpoint,
        network_from_checkpoint,
    )
del TYPE_CHECKING

__all__ = [
    # run configuration: frozen, validated dataclasses (the TOML files and --set overrides of the command line)
    "RunConfig", "ModelConfig", "EPConfig", "TrainConfig", "DataConfig", "OutputConfig", "HardwareConfig",
    "ConfigError", "load_config", "config_from_dict", "config_to_dict", "dump_toml",
    # the ideal reference: network, training, evaluation, checkpoints, EP estimators, data
    "LayeredNetwork", "Trainer", "IdealSubstrate", "evaluate", "build_network", "load_checkpoint",
    "network_from_checkpoint", "TrainingDiverged", "CheckpointError", "RunExists",
    "make_estimator", "Symmetric", "OneSided", "RandomSign", "ep_gradients",
    "load_dataset", "Dataset", "DatasetError",
    # devices and crossbars
    "DeviceCard", "DeviceCardError", "load_card", "list_presets", "card_from_dict", "card_to_toml", "dump_card",
    "DeviceArray", "pulse_response",
    "CrossbarLayer", "CrossbarTile", "DifferentialArray", "Periphery",
    # the simulated hardware and hardware-in-the-loop training
    "HardwareNetwork", "HardwareTrainer", "HardwareSubstrate", "hardware_from_config", "periphery_from_config",
    "hardware_from_checkpoint",
    # the cost model: energy, latency and area of training and inference
    "measure_cost", "CostReport", "Technology", "load_technology",
    # SPICE export and sweeps
    "build_netlist", "export_netlist",
    "load_sweep", "run_sweep", "read_results", "SweepError",
]

# the module (relative to this package) of each public name
_MODULES: dict[str, tuple[str, ...]] = {
    "config": ("RunConfig", "ModelConfig", "EPConfig", "TrainConfig", "DataConfig", "OutputConfig", "HardwareConfig",
               "ConfigError", "load_config", "config_from_dict", "config_to_dict", "dump_toml"),
    "network": ("LayeredNetwork",),
    "train": ("Trainer", "IdealSubstrate", "evaluate", "build_network", "load_checkpoint", "network_from_checkpoint",
              "TrainingDiverged", "CheckpointError", "RunExists"),
    "estimators": ("make_estimator", "Symmetric", "OneSided", "RandomSign", "ep_gradients"),
    "data": ("load_dataset", "Dataset", "DatasetError"),
    "devices": ("DeviceCard", "DeviceCardError", "load_card", "list_presets", "card_to_toml", "dump_card",
                "DeviceArray", "pulse_response"),
    "devices.cards": ("card_from_dict",),
    "crossbar": ("CrossbarLayer", "CrossbarTile", "DifferentialArray", "Periphery"),
    "hardware": ("HardwareNetwork",),
    "hil": ("HardwareTrainer", "HardwareSubstrate", "hardware_from_config", "periphery_from_config",
            "hardware_from_checkpoint"),
    "cost": ("CostReport", "Technology", "load_technology", "measure_cost"),
    "spice": ("build_netlist", "export_netlist"),
    "sweep": ("load_sweep", "run_sweep", "read_results", "SweepError"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}


def _version() -> str:
    """The installed distribution's version, else the ``[project] version`` of the source tree's pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(__name__)
    except PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    try:
        project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text("utf-8"))["project"]
        if project.get("name") == __name__:
            return str(project["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "0+unknown"


def _submodules() -> list[str]:
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str):
    """Load a public name, ``__version__`` or a submodule on first use (a name is then kept in the module)."""
    import importlib
    import importlib.util

    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name == "__version__":
        value = _version()
    elif name.startswith("__"):  # probes of tools (__wrapped__, __test__, ...): no suggestions to compute
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    elif not name.startswith("_") and "." not in name and importlib.util.find_spec(f".{name}", __name__):
        return importlib.import_module(f".{name}", __name__)  # importing a submodule binds it in this module
    else:
        import difflib

        close = difflib.get_close_matches(name, [*__all__, *_submodules()], n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}{hint}. Its public names are listed in "
                             f"{__name__}.__all__ (guide: docs/python_api.md); other names are imported from their "
                             f"module, e.g. 'from {__name__}.spice.run import cross_check'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__", *_submodules()})
