"""Shared fixtures. Tests run on 2 cores: keep simulations small (few rounds, few nodes).

Marks: ``slow`` for a test that starts processes (the CLI, worker pools, containers),
runs a deployment (a server with training nodes) or several full runs, or takes more
than a couple of seconds; ``pytest -m "not slow"`` is the quick subset. No test
depends on the machine's speed: deadlines come from a ``FakeClock`` or from a measured
healthy run, and every other wait is an upper bound that ends when the thing happens
(docs/architecture.md, "Tests")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# fleet_kit: the tls and fleet fixtures of the gRPC fleet tests;
# process_guard: a test that starts potluck processes without the slow mark fails.
pytest_plugins = ["fleet_kit", "process_guard"]
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
