"""Shared fixtures: where the real LHC Olympics files are, and small CPU defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def lhco_data_dir() -> Path:
    """$STREAMFLOW_DATA if set, else ../shared/data/lhco beside the repository."""
    env = os.environ.get("STREAMFLOW_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lhco"


@pytest.fixture(scope="session")
def lhco_dir() -> Path:
    path = lhco_data_dir()
    if not path.is_dir():
        pytest.fail(f"LHCO data folder not found at {path}: set STREAMFLOW_DATA")
    return path


@pytest.fixture(scope="session")
def features_file(lhco_dir: Path) -> Path:
    return lhco_dir / "lhco_rnd_first60k.features.h5"


@pytest.fixture(scope="session")
def raw_file(lhco_dir: Path) -> Path:
    return lhco_dir / "events_anomalydetection_tiny.h5"


@pytest.fixture(autouse=True, scope="session")
def _small_cpu_threads() -> None:
    # Tests share a 2-core machine with the processes they start.
    torch.set_num_threads(1)
