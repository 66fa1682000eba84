"""A round record as metrics.jsonl holds it: what is written, what comes back."""

from __future__ import annotations

import json
import math

from potluck.core.records import Contribution, Failure, RoundProvenance, RoundRecord


def test_failure_causes_round_trip_and_hook_only_fields_are_not_written():
    causes = (Failure("node-003", "failed", "fit raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
              Failure("node-007", "timed_out", "round deadline of 600 s passed before it ran", attempt=2))
    record = RoundRecord(round=2, accuracy=math.nan, loss=0.5, num_nodes=8, sampled=10, seconds=1.25, model_digest="d",
                         failures={"failed": 1, "timed_out": 1}, failure_causes=causes,
                         provenance=RoundProvenance("s", (Contribution("node-001", "u", 5),)), aggregate_seconds=0.01)
    line = json.loads(json.dumps(record.to_json()))
    assert line["failure_causes"] == [
        {"node_id": "node-003", "kind": "failed", "cause": causes[0].cause, "attempt": 1},
        {"node_id": "node-007", "kind": "timed_out", "cause": causes[1].cause, "attempt": 2},
    ]
    assert "provenance" not in line and "aggregate_seconds" not in line and line["accuracy"] is None
    back = RoundRecord.from_json(line)
    assert back == record and back.failure_causes == causes
    assert math.isnan(back.aggregate_seconds) and back.provenance is None
    assert str(causes[0]) == "node-003: fit raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"


def test_a_line_written_before_failure_causes_existed_still_reads():
    old = {"round": 1, "accuracy": 0.9, "loss": 0.3, "num_nodes": 3, "sampled": 3, "seconds": 0.1,
           "model_digest": "d", "failures": {"left": 1}, "extras": {}}
    record = RoundRecord.from_json(old)
    assert record.failure_causes == () and record.failures == {"left": 1}
