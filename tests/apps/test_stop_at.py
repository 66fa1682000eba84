"""``--stop-at``: a run ends after the first round whose held-out metric reaches a target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from potluck.apps.simulate import run_simulation
from potluck.apps.stop_at import StopAt
from potluck.core.config import SimulationConfig
from potluck.core.errors import BudgetExhausted, ConfigError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.core.sections import parse_stop_at
from potluck.tasks.protocol import EvalOutput


@pytest.mark.parametrize(("text", "parsed"), [
    ("accuracy=0.97", ("accuracy", True, 0.97)),
    ("perplexity=4.5", ("perplexity", False, 4.5)),
    ("loss = 0.1", ("loss", False, 0.1)),
    ("f1_macro>=0.8", ("f1_macro", True, 0.8)),
    ("bleu<=3", ("bleu", False, 3.0)),
    ("bleu=3", None),  # a metric of unknown direction must say which way
    ("accuracy", None),
    ("accuracy=high", None),
    ("accuracy=nan", None),
    ("=0.9", None),
])
def test_targets_parse(text, parsed):
    assert parse_stop_at(text) == parsed


def test_a_malformed_target_is_a_settings_error():
    with pytest.raises(ConfigError, match="stop_at must be METRIC=VALUE"):
        SimulationConfig(stop_at="accuracy>0.9")


def _record(rnd: int) -> RoundRecord:
    return RoundRecord(rnd, 1, 1, 0.0, "")


def test_the_guard_stops_after_the_round_that_reached_the_target():
    params = Params.from_arrays({"w": np.zeros(1)})
    losses = iter([0.9, 0.5, 0.4])
    stop = StopAt("perplexity=2.0")
    evaluate = stop.watch(lambda p: EvalOutput(next(losses), 10, {"perplexity": math.exp(next(losses))}))
    evaluate(params)  # perplexity e^0.5 ≈ 1.65
    stop.before_round(2)  # nothing committed yet: no stop
    stop.on_commit(_record(1), params, None)
    with pytest.raises(BudgetExhausted, match=r"perplexity reached 1\.649 \(--stop-at perplexity ≤ 2\); stopping "
                                               r"after round 1"):
        stop.before_round(2)


def test_a_metric_the_task_does_not_report_is_named():
    stop = StopAt("auc=0.9")
    evaluate = stop.watch(lambda p: EvalOutput(0.5, 10, {"accuracy": 0.8}))
    with pytest.raises(ConfigError, match="--stop-at auc: the task reports accuracy, loss"):
        evaluate(Params.from_arrays({"w": np.zeros(1)}))


def test_without_held_out_data_stop_at_is_refused():
    with pytest.raises(ConfigError, match="--stop-at needs held-out data"):
        StopAt("accuracy=0.9").watch(None)


def test_a_simulation_stops_at_its_target(tmp_path):
    config = SimulationConfig(rounds=30, nodes=4, stop_at="accuracy=0.5", run_dir=str(tmp_path / "run"))
    result = run_simulation(config)
    last = result.records[-1]
    assert last.round < 30 and last.metrics["accuracy"] >= 0.5
    assert all(r.metrics["accuracy"] < 0.5 for r in result.records[:-1])
    assert result.stopped is not None and result.stopped.endswith(f"stopping after round {last.round}")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["round"] == last.round
