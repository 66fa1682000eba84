"""``potluck simulate`` with secure aggregation: digits learns about as well as without it."""

from __future__ import annotations

import pytest

from potluck.apps.simulate import run_simulation
from potluck.core.config import SimulationConfig


def last_record(tmp_path, name, **settings):
    result = run_simulation(SimulationConfig(rounds=5, run_dir=str(tmp_path / name), **settings))
    return result.records[-1]


@pytest.mark.slow
def test_secure_aggregation_with_dropouts_matches_the_plain_run(tmp_path):
    plain = last_record(tmp_path, "plain")
    masked = last_record(tmp_path, "masked", secagg=True, secagg_dropout=0.3, secagg_dropout_at="unmask")
    lost = last_record(tmp_path, "lost", secagg=True, secagg_dropout=0.3, secagg_dropout_at="masked-input")
    assert masked.num_nodes == 10 and lost.num_nodes == 7 and lost.failures == {"left": 3}
    assert masked.primary > plain.primary - 0.03 and lost.primary > plain.primary - 0.05


@pytest.mark.slow
def test_process_pool_gives_the_same_model_as_in_process(tmp_path):
    one = run_simulation(SimulationConfig(rounds=2, secagg=True, run_dir=str(tmp_path / "a")))
    two = run_simulation(SimulationConfig(rounds=2, secagg=True, workers=2, run_dir=str(tmp_path / "b")))
    assert one.final_params.digest == two.final_params.digest
