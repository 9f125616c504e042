"""The public Python API of ``neuromorph/__init__.py`` and its guide docs/python_api.md.

``import neuromorph`` is cheap (no torch, no submodule), every public name resolves lazily to the object of its
module, ``__version__`` is the project's version, an unknown name raises a helpful AttributeError, and every code
block of the guide is a code cell of notebooks/07_python_api.ipynb (which tests/test_notebooks.py executes).
"""

import ast
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

import neuromorph

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python_api.md"
NOTEBOOK = ROOT / "notebooks" / "07_python_api.ipynb"
HEAVY = ("torch", "numpy", "scipy", "matplotlib", "sklearn", "tqdm")


def _fresh_python(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object, returned here."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_cheap():
    res = _fresh_python(
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import neuromorph\n"
        "after_import = sorted(set(sys.modules) - before)\n"
        "version = neuromorph.__version__\n"
        "names = dir(neuromorph)\n"
        "print(json.dumps({'new': after_import, 'loaded': sorted(sys.modules), 'before': sorted(before),\n"
        "                  'version': version}))\n")
    assert not [m for m in res["new"] if m.startswith("neuromorph.")], res["new"]
    heavy = [m for m in res["loaded"] if m.split(".")[0] in HEAVY and m not in res["before"]]
    assert "torch" not in res["loaded"] and not heavy, (
        f"import neuromorph (and __version__, dir()) imported {heavy[:10]}: keep neuromorph/__init__.py free of "
        "imports of its submodules (public names load lazily in __getattr__)")
    assert res["version"] == neuromorph.__version__


def test_first_use_imports_the_defining_module():
    res = _fresh_python(
        "import json, sys\n"
        "import neuromorph\n"
        "fn = neuromorph.load_card\n"
        "print(json.dumps({'module': fn.__module__, 'hil': 'neuromorph.hil' in sys.modules}))\n")
    assert res == {"module": "neuromorph.devices.cards", "hil": False}


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def test_version_matches_pyproject():
    assert neuromorph.__version__ == _pyproject_version(), (
        "neuromorph.__version__ (the installed distribution's metadata) differs from pyproject.toml: reinstall "
        "(pip install -e .) after changing the version")


def test_version_falls_back_to_pyproject(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert neuromorph._version() == _pyproject_version()


def test_every_public_name_resolves_to_its_module_object():
    assert len(set(neuromorph.__all__)) == len(neuromorph.__all__), "a name is listed twice in __all__"
    assert set(neuromorph.__all__) == set(neuromorph._EXPORTS), "__all__ and _MODULES list different names"
    for name in neuromorph.__all__:
        module = importlib.import_module(f"neuromorph.{neuromorph._EXPORTS[name]}")
        assert getattr(neuromorph, name) is getattr(module, name), name


def test_star_import():
    namespace: dict = {}
    exec("from neuromorph import *", namespace)
    assert set(neuromorph.__all__) <= set(namespace)


def _submodules() -> set[str]:
    pkg = ROOT / "neuromorph"
    return {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")} | {
        p.parent.name for p in pkg.glob("*/__init__.py")}


def test_public_names_do_not_shadow_submodules():
    # a public name equal to a submodule's would be replaced by the module once anything imports that submodule
    # (``neuromorph.compare`` is the EP-vs-BPTT module, so hil.compare is not exported at the top level)
    assert not set(neuromorph.__all__) & _submodules()


def test_dir_lists_public_names_version_and_submodules():
    names = set(dir(neuromorph))
    assert set(neuromorph.__all__) <= names
    assert {"__version__", "hil", "devices", "spice", "compare"} <= names


def test_submodules_load_on_attribute_access():
    assert neuromorph.hil is importlib.import_module("neuromorph.hil")
    assert neuromorph.hil.compare.__module__ == "neuromorph.hil"


def test_unknown_attribute_raises_a_helpful_error():
    with pytest.raises(AttributeError, match=r"no attribute 'Traner' \(did you mean 'Trainer'\?\).*__all__"):
        neuromorph.Traner  # noqa: B018
    with pytest.raises(AttributeError, match=r"no attribute 'no_such_name'.*docs/python_api\.md"):
        neuromorph.no_such_name  # noqa: B018
    assert not hasattr(neuromorph, "no_such_name")
    assert not hasattr(neuromorph, "__no_such_dunder__")
    with pytest.raises(ImportError):
        exec("from neuromorph import no_such_name", {})


def _type_checking_imports() -> dict[str, str]:
    """name -> module (relative to the package) of the ``if TYPE_CHECKING:`` imports of neuromorph/__init__.py."""
    tree = ast.parse((ROOT / "neuromorph" / "__init__.py").read_text(encoding="utf-8"))
    blocks = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    assert len(blocks) == 1
    return {alias.asname or alias.name: node.module
            for node in blocks[0].body if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_type_checking_imports_match_the_lazy_table():
    assert _type_checking_imports() == neuromorph._EXPORTS, (
        "the TYPE_CHECKING imports (what IDEs and type checkers see) and _MODULES (what __getattr__ loads) differ")


def _doc_code_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"),
                                          flags=re.S | re.M)]


def test_doc_lists_every_public_name():
    text = DOC.read_text(encoding="utf-8")
    missing = [name for name in neuromorph.__all__ if f"`{name}`" not in text]
    assert not missing, f"docs/python_api.md does not mention {missing}"


def test_doc_code_blocks_are_the_notebook_cells():
    """The guide's code runs: its blocks, in order, are code cells of the executed notebook."""
    blocks = _doc_code_blocks()
    assert len(blocks) >= 10
    cells = [c.source.strip() for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    it = iter(cells)
    for i, block in enumerate(blocks):
        assert any(cell == block for cell in it), (
            f"code block {i + 1} of docs/python_api.md (starting {block.splitlines()[0]!r}) is not a code cell of "
            f"{NOTEBOOK.name} (in the page's order): copy it there, so that the notebook test runs it")
