"""Shared fixtures. Tests run on 2 cores: keep simulations small (few rounds, few nodes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["fleet_kit"]  # the tls and fleet fixtures of the gRPC fleet tests
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def small_config():
    """A quick digits simulation (4 rounds, 5 nodes, 1 local epoch)."""
    from potluck.core.config import SimulationConfig

    def make(tmp: Path, **changes):
        base = dict(rounds=4, nodes=5, fit={"epochs": 1}, run_dir=str(tmp / "run"))
        return SimulationConfig.from_mapping({**base, **changes})

    return make


@pytest.fixture(autouse=True)
def _quiet_torch_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
