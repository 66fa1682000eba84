"""Worker processes: failures and deadlines cost only the affected nodes."""

from __future__ import annotations

import time

import pytest

from potluck.apps.simulate import run_simulation


@pytest.mark.slow
def test_hung_and_crashing_nodes_are_dropped_and_rounds_commit(tmp_path, small_config):
    cfg = small_config(tmp_path, task="flaky_digits:FlakyDigits", workers=2, rounds=2, nodes=6, round_timeout=8.0)
    started = time.monotonic()
    result = run_simulation(cfg)
    assert time.monotonic() - started < 60, "a hung node must not hold a round past its deadline for long"
    first, second = result.records
    for record in (first, second):
        assert record.num_nodes == 4 and record.sampled == 6
        assert record.failures == {"timed_out": 1, "failed": 1}
    assert first.metric == "loss" and 0 < first.metrics["accuracy"] <= 1  # it declares no primary metric
