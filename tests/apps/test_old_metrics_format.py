"""A run written before records carried the task's metrics (top-level ``accuracy`` and
``loss`` only) reads back, resumes, and stays consistent for ``potluck check``."""

from __future__ import annotations

import json

from potluck.apps.check import check_run_dir
from potluck.apps.simulate import run_simulation
from potluck.runtime.rundir import RunDirectory

NEW_KEYS = ("metrics", "federated_metrics", "metric", "higher_is_better")


def to_old_format(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in NEW_KEYS}


def test_an_old_run_reads_and_resumes(tmp_path, small_config):
    config = small_config(tmp_path, rounds=2, nodes=3)
    run_simulation(config)
    run = RunDirectory(tmp_path / "run")
    for rnd in range(3):  # the commit marks and metrics.jsonl as an older potluck wrote them
        mark = json.loads(run.mark_path(rnd).read_text())
        mark["record"] = to_old_format(mark["record"])
        run.mark_path(rnd).write_text(json.dumps(mark, sort_keys=True))
    old_lines = [to_old_format(json.loads(line)) for line in run.metrics_file.read_text().splitlines()]
    run.metrics_file.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in old_lines))
    assert all(set(line) >= {"accuracy", "loss", "federated_accuracy"} for line in old_lines)

    old = run.records()
    assert [(r.metric, r.higher_is_better) for r in old] == [("accuracy", True)] * 2
    assert [r.primary for r in old] == [line["accuracy"] for line in old_lines]
    assert old[-1].federated_metrics["accuracy"] == old_lines[-1]["federated_accuracy"]
    assert check_run_dir(run.path).ok

    (run.path / "report.png").unlink()
    resumed = run_simulation(config.replace(rounds=3), resume=True)
    assert resumed.resumed_from == 2 and [r.round for r in resumed.records] == [1, 2, 3]
    assert resumed.records[:2] == old
    last = json.loads(run.metrics_file.read_text().splitlines()[-1])
    assert last["metric"] == "accuracy" and last["metrics"]["accuracy"] == last["accuracy"]
    assert (run.path / "report.png").exists() and check_run_dir(run.path).ok
