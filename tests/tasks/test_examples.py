"""The examples in examples/ run (STYLE 18: examples are tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo, metric_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_charlm_tiny_trains_and_samples(tmp_path):
    import charlm_tiny

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    sample = charlm_tiny.main(str(text), rounds=1, nodes=2)
    assert sample.startswith("\n") and len(sample.encode("utf-8", errors="replace")) >= 100
    task = resolve_task("charlm_tiny:task")
    assert task.name == "charlm-tiny" and task.settings.positions == "rope"


def test_mae_regression_ranks_by_its_own_metric(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    price = x @ [2.0, -1.0] + 1.0
    (tmp_path / "h.csv").write_text("a,b,price\n" + "\n".join(f"{a},{b},{p}" for (a, b), p in zip(x, price)))
    task = resolve_task("mae_regression:MAERegression")
    assert metric_of(task).name == "mae" and not metric_of(task).higher_is_better
    data = task.load_data(tmp_path / "h.csv")
    params = task.build(DataInfo.from_dataset(data), 0)
    out = task.evaluate(params, data)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    hidden = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    pred = (hidden @ w["2.weight"].T + w["2.bias"])[:, 0]
    assert out.metrics["mae"] == pytest.approx(np.mean(np.abs(pred - price)), rel=1e-4)
