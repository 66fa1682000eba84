"""Fixtures for the fleet tests (helpers live in fleet_kit.py)."""

from __future__ import annotations

import pytest
from fleet_kit import make_tls, serve_fleet


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory)


@pytest.fixture
def fleet(tls):
    with serve_fleet(tls) as served:
        yield served
