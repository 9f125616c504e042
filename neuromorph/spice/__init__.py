"""SPICE export of neuromorph's settling circuit and ngspice cross-validation (circuits/README.md).

:mod:`.netlist` writes the netlist (raw text, fast; a PySpice ``Circuit`` on request); :mod:`.run` simulates it
with ngspice (PySpice shared-library mode, or ``ngspice -b``) and compares with neuromorph's solver.
"""

from .netlist import (
    DEFAULT_OPTIONS,
    OUTPUT_STAGES,
    Netlist,
    SpiceLayout,
    build_netlist,
    export_netlist,
    library_path,
    sanitize_name,
    to_pyspice,
)

__all__ = ["DEFAULT_OPTIONS", "OUTPUT_STAGES", "Netlist", "SpiceLayout", "build_netlist", "export_netlist",
           "library_path", "sanitize_name", "to_pyspice"]
