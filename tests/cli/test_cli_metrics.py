"""Any model, any metric: `potluck simulate` of a language model, a regression and a
classifier writes each task's own metrics to metrics.jsonl, the progress line, the
summary (with "best" in the metric's direction) and report.png."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.cli.simulate import ProgressDisplay, summary
from potluck.core.params import Params
from potluck.core.records import RoundRecord

PNG = b"\x89PNG\r\n\x1a\n"
TINY_LM = ["--task", "charlm", "-F", "context=16", "-F", "width=16", "-F", "depth=1", "-F", "heads=2", "-F", "steps=5",
           "-F", "batch_size=8", "-F", "device=cpu"]


def simulate(run_dir, *args: str) -> str:
    done = CliRunner().invoke(app, ["simulate", "--nodes", "2", "--rounds", "2", "--run-dir", str(run_dir), *args])
    assert done.exit_code == 0, done.output
    assert (run_dir / "report.png").read_bytes()[:8] == PNG
    return done.output


def lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def best_row(output: str, metric: str) -> tuple[float, float, int, str]:
    """The summary's row of the primary metric: last value, best value, its round, direction."""
    last = re.search(rf"│ {metric} \(held-out\)\s*│\s*([\d.]+)\s", output)
    best = re.search(rf"│ best {metric}\s*│\s*([\d.]+) in round (\d+) \((\w+) is better\)", output)
    assert last and best, output
    return float(last[1]), float(best[1]), int(best[2]), best[3]


def test_a_language_model_reports_perplexity_and_its_best_is_the_lowest(tmp_path):
    text = tmp_path / "play.txt"
    text.write_text("".join(f"{who}:\nThe rain will stop before the evening comes.\n\n"
                            for _ in range(20) for who in ("ALICE", "BOB")))
    run = tmp_path / "lm"
    output = simulate(run, *TINY_LM, "--data-path", str(text))
    records = lines(run)
    for line in records:
        assert line["metric"] == "perplexity" and line["higher_is_better"] is False
        assert set(line["metrics"]) == {"loss", "perplexity"} and not [k for k in line if "accuracy" in k]
        assert line["metrics"]["perplexity"] == pytest.approx(math.exp(line["loss"]))
    assert set(records[-1]["federated_metrics"]) == {"loss", "perplexity"}  # the last round evaluates on nodes
    last, best, best_round, direction = best_row(output, "perplexity")
    perplexities = [line["metrics"]["perplexity"] for line in records]
    assert direction == "lower" and best == pytest.approx(min(perplexities), abs=1e-4)
    assert best_round == 1 + perplexities.index(min(perplexities))
    assert last == pytest.approx(perplexities[-1], abs=1e-4)
    assert re.search(r"round\s+2/2.*perplexity [\d.]+\s+loss [\d.]+", output), output  # the progress line
    assert "perplexity (nodes' validation)" in output


def test_a_regression_reports_mse(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,c,price\n" + "".join(f"{r[0]},{r[1]},{r[2]},{t}\n" for r, t in zip(x, y)))
    run = tmp_path / "reg"
    output = simulate(run, "--task", "regression", "--data-path", str(csv), "--label-column", "price", "--partition", "iid")
    records = lines(run)
    assert all(line["metric"] == "mse" and {"mse", "rmse", "r2", "loss"} <= set(line["metrics"]) for line in records)
    assert not [k for line in records for k in line if "accuracy" in k]
    _, best, _, direction = best_row(output, "mse")
    assert direction == "lower" and best == pytest.approx(min(line["metrics"]["mse"] for line in records), abs=1e-4)


def test_the_digits_run_keeps_its_accuracy_keys(tmp_path):
    run = tmp_path / "digits"
    output = simulate(run, "-F", "epochs=1")
    records = lines(run)
    for line in records:  # what readers of older runs look for
        assert 0 < line["accuracy"] <= 1 and line["loss"] > 0
        assert line["metrics"] == {"accuracy": line["accuracy"], "loss": line["loss"]}
    assert records[0]["federated_accuracy"] is None and records[-1]["federated_accuracy"] > 0
    _, best, _, direction = best_row(output, "accuracy")
    assert direction == "higher" and best == pytest.approx(max(line["accuracy"] for line in records), abs=1e-4)
    assert re.search(r"accuracy [\d.]+\s+loss [\d.]+", output)


def lm_record(rnd: int, perplexity: float) -> RoundRecord:
    return RoundRecord(rnd, 2, 2, 0.1, "d", metrics={"loss": math.log(perplexity), "perplexity": perplexity},
                       metric="perplexity", higher_is_better=False)


def test_the_summary_and_progress_rank_in_the_metrics_direction(tmp_path, capsys):
    records = [lm_record(1, 30.0), lm_record(2, 12.5), lm_record(3, 14.0)]
    summary(records, Params.from_arrays({"w": np.zeros(3, np.float32)}), tmp_path, 1.0, 0)
    out = capsys.readouterr().out
    assert best_row(out, "perplexity") == (14.0, 12.5, 2, "lower")
    assert "loss (held-out)" in out and "accuracy" not in out
    display = ProgressDisplay(3, 1)
    display.on_commit(records[1], None, None)
    assert display.progress.tasks[0].fields["figures"] == f"perplexity 12.5000  loss {math.log(12.5):.4f}"


def test_a_task_ranked_by_loss_shows_one_loss_row(tmp_path, capsys):
    records = [RoundRecord(1, 2, 2, 0.1, "d", metrics={"loss": 0.5}), RoundRecord(2, 2, 2, 0.1, "d", metrics={"loss": 0.7})]
    summary(records, Params.from_arrays({"w": np.zeros(3, np.float32)}), tmp_path, 1.0, 0)
    out = capsys.readouterr().out
    assert best_row(out, "loss") == (0.7, 0.5, 1, "lower") and out.count("loss (held-out)") == 1
