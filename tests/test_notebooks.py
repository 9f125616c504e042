"""The notebooks in notebooks/: each executes without error (nbclient, the ``python3`` kernel of this interpreter,
working directory notebooks/), and each is committed stripped (no outputs, no execution counts).

The ``python3`` kernelspec comes with ipykernel (the ``dev`` extra installs it into the virtual environment); its
command ``python -m ipykernel_launcher`` is started by jupyter_client with ``sys.executable``, so the kernel runs in
the same environment as the tests. 06_spice needs ngspice: skipped locally when missing, a failure when CI=true.
"""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
KERNEL = "python3"


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names and all(name[:2].isdigit() for name in names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{path.name}: code cells {dirty} carry outputs or execution counts; strip them "
                       "(nbformat: clear cell.outputs and set cell.execution_count = None)")


def test_python3_kernel_is_this_interpreter():
    argv = KernelSpecManager().get_kernel_spec(KERNEL).argv
    # jupyter_client replaces a bare python / python3 / python3.X by sys.executable when it starts the kernel
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    assert argv[0] in bare or Path(argv[0]).resolve() == Path(sys.executable).resolve(), (
        f"the {KERNEL!r} kernel runs {argv[0]!r}, not this interpreter {sys.executable!r}: install ipykernel here "
        f"({sys.executable} -m pip install ipykernel) or remove the other kernelspec (jupyter kernelspec list)")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    if "spice" in path.stem:
        from neuromorph.spice.run import spice_available

        ok, why = spice_available()
        if not ok:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{path.name} needs ngspice/PySpice, missing in CI: {why}")
            pytest.skip(f"{path.name}: {why}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks write their runs and figures into tempfile dirs
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(NB_DIR)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
