"""Worker processes: failures and deadlines cost only the affected nodes.

The round deadline is derived from this machine's measured speed (one healthy round
with a fresh pool of the same size, timed first), not a fixed number of seconds, so the
test passes on a busy machine too: a healthy node always fits in the deadline, a hung
one never does (it sleeps for an hour; the pool kills it)."""

from __future__ import annotations

import pytest

from potluck.apps.simulate import run_simulation

SAFETY = 3.0  # the deadline is this many healthy rounds


@pytest.mark.slow
def test_hung_and_crashing_nodes_are_dropped_and_rounds_commit(tmp_path, small_config):
    (round_1,) = run_simulation(small_config(tmp_path / "healthy", task="digits", workers=2, rounds=1, nodes=6)).records
    healthy = round_1.seconds  # spawning the workers, six fits, evaluation: what a round with a fresh pool costs
    deadline = max(8.0, SAFETY * healthy)

    cfg = small_config(tmp_path / "flaky", task="flaky_digits:FlakyDigits", workers=2, rounds=2, nodes=6,
                       round_timeout=deadline)
    result = run_simulation(cfg)
    first, second = result.records
    for record in (first, second):
        assert record.num_nodes == 4 and record.sampled == 6
        assert record.failures == {"timed_out": 1, "failed": 1}
        # The hung node sleeps for an hour: the round ends at its deadline, plus a fresh
        # pool for the evaluation (the hung worker was killed), not when the node wakes.
        assert record.seconds < deadline + SAFETY * healthy + 30, (record.seconds, deadline, healthy)
    assert first.metric == "loss" and 0 < first.metrics["accuracy"] <= 1  # it declares no primary metric
