import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets in ../shared/data; skipped locally when absent, a failure in CI."""
    if not DATA_DIR.is_dir():
        msg = f"shared datasets not found at {DATA_DIR}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return DATA_DIR


@pytest.fixture
def spice():
    """ngspice through PySpice: skipped locally when missing, a failure in CI."""
    from neuromorph.spice.run import spice_available

    ok, why = spice_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"ngspice/PySpice missing in CI: {why}")
        pytest.skip(why)
