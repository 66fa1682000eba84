"""A round record as metrics.jsonl holds it: what is written, what comes back."""

from __future__ import annotations

import json
import math

from potluck.core.records import Contribution, Failure, RoundProvenance, RoundRecord, best_record


def test_failure_causes_round_trip_and_hook_only_fields_are_not_written():
    causes = (Failure("node-003", "failed", "fit raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
              Failure("node-007", "timed_out", "round deadline of 600 s passed before it ran", attempt=2))
    record = RoundRecord(round=2, num_nodes=8, sampled=10, seconds=1.25, model_digest="d",
                         metrics={"loss": 0.5, "accuracy": math.nan}, metric="accuracy", higher_is_better=True,
                         failures={"failed": 1, "timed_out": 1}, failure_causes=causes,
                         provenance=RoundProvenance("s", (Contribution("node-001", "u", 5),)), aggregate_seconds=0.01)
    line = json.loads(json.dumps(record.to_json()))
    assert line["failure_causes"] == [
        {"node_id": "node-003", "kind": "failed", "cause": causes[0].cause, "attempt": 1},
        {"node_id": "node-007", "kind": "timed_out", "cause": causes[1].cause, "attempt": 2},
    ]
    assert "provenance" not in line and "aggregate_seconds" not in line and line["accuracy"] is None
    assert line["metrics"] == {"loss": 0.5, "accuracy": None} and line["loss"] == 0.5
    back = RoundRecord.from_json(line)
    assert back == record and back.failure_causes == causes
    assert math.isnan(back.aggregate_seconds) and back.provenance is None
    assert str(causes[0]) == "node-003: fit raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"


def test_a_line_written_before_failure_causes_existed_still_reads():
    old = {"round": 1, "accuracy": 0.9, "loss": 0.3, "num_nodes": 3, "sampled": 3, "seconds": 0.1,
           "model_digest": "d", "failures": {"left": 1}, "extras": {}}
    record = RoundRecord.from_json(old)
    assert record.failure_causes == () and record.failures == {"left": 1}


# A line of metrics.jsonl as potluck wrote it before tasks declared their metrics
# (the default digits run, round 5).
OLD_LINE = (
    '{"accuracy": 0.9331476323119777, "attempts": 1, "bytes_up": 196400, "extras": {}, "failure_causes": [], '
    '"failures": {}, "federated_accuracy": 0.9214285714285714, "federated_loss": 0.3576098305838449, '
    '"loss": 0.3291951766585241, "model_digest": "2edbbf0e3b4e527a060e586016e2b9bc637f4eb4b97c7e08a715b3c805ed70f4", '
    '"num_examples": 1298, "num_nodes": 10, "round": 5, "sampled": 10, "seconds": 0.11981964999995398, '
    '"train_loss": 0.23899015123969777}'
)


def test_an_old_format_line_reads_as_a_classifiers_record_and_writes_its_old_keys_back():
    old = json.loads(OLD_LINE)
    record = RoundRecord.from_json(old)
    assert record.metrics == {"loss": 0.3291951766585241, "accuracy": 0.9331476323119777}
    assert record.federated_metrics == {"loss": 0.3576098305838449, "accuracy": 0.9214285714285714}
    assert (record.metric, record.higher_is_better) == ("accuracy", True)
    assert record.primary == old["accuracy"] and record.loss == old["loss"]
    assert (record.round, record.num_nodes, record.model_digest, record.bytes_up) == (5, 10, old["model_digest"], 196400)
    again = record.to_json()
    assert {k: again[k] for k in old} == old  # every key an old reader knows, with its value
    assert RoundRecord.from_json(again) == record


def test_an_old_line_without_a_test_set_ranks_by_loss():
    old = {"round": 1, "accuracy": None, "loss": None, "federated_accuracy": None, "federated_loss": 0.7,
           "num_nodes": 3, "sampled": 3, "seconds": 0.1, "model_digest": "d"}
    record = RoundRecord.from_json(old)
    assert record.metrics == {} and record.federated_metrics == {"loss": 0.7}
    assert record.metric == "loss" and math.isnan(record.primary) and math.isnan(record.loss)


def test_a_language_models_line_carries_perplexity_and_no_classifier_keys():
    record = RoundRecord(round=3, num_nodes=2, sampled=2, seconds=0.5, model_digest="d",
                         metrics={"loss": 2.5, "perplexity": 12.2}, federated_metrics={"loss": 2.6, "perplexity": 13.5},
                         metric="perplexity", higher_is_better=False)
    line = json.loads(json.dumps(record.to_json()))
    assert line["metrics"] == {"loss": 2.5, "perplexity": 12.2} and line["metric"] == "perplexity"
    assert line["higher_is_better"] is False and (line["loss"], line["federated_loss"]) == (2.5, 2.6)
    assert not [key for key in line if "accuracy" in key]
    assert RoundRecord.from_json(line) == record
    assert (record.primary, record.federated_primary) == (12.2, 13.5)


def _scored(metric: str, higher: bool, values: list[float]) -> list[RoundRecord]:
    return [RoundRecord(round=i, num_nodes=1, sampled=1, seconds=0.1, model_digest="d",
                        metrics={metric: v}, metric=metric, higher_is_better=higher) for i, v in enumerate(values, 1)]


def test_the_best_round_follows_the_metrics_direction():
    values = [30.0, 12.5, math.nan, 14.0]
    assert best_record(_scored("perplexity", False, values)).round == 2  # the lowest
    assert best_record(_scored("accuracy", True, values)).round == 1  # the highest
    assert best_record(_scored("mse", False, [math.nan])) is None
    assert best_record([]) is None
