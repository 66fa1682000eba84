"""A Task names its primary metric; a task that names none is ranked by its loss."""

from __future__ import annotations

import math
import sys
import types

import pytest

from potluck.core.errors import TaskError
from potluck.tasks.builtin import BUILTIN_TASKS, resolve_task
from potluck.tasks.protocol import LOSS_METRIC, EvalOutput, MetricSpec, metric_of


@pytest.mark.parametrize(("name", "metric", "up"), [
    ("digits", "accuracy", True), ("digits-sklearn", "accuracy", True), ("mlp", "accuracy", True),
    ("cnn", "accuracy", True), ("charlm", "perplexity", False), ("regression", "mse", False),
    ("synthetic", "accuracy", True),
    ("minilm-speaker", "accuracy", True),
])
def test_each_builtin_declares_its_primary_metric(name, metric, up):
    assert metric_of(resolve_task(name)) == MetricSpec(metric, higher_is_better=up)


def test_every_builtin_is_listed_above():
    assert set(BUILTIN_TASKS) == {"digits", "digits-sklearn", "mlp", "cnn", "charlm", "regression", "synthetic", "minilm-speaker"}


def test_better_follows_the_direction_and_never_prefers_nan():
    up, down = MetricSpec("accuracy", True), MetricSpec("loss", False)
    assert up.better(0.9, 0.8) and not up.better(0.8, 0.9)
    assert down.better(1.0, 2.0) and not down.better(2.0, 1.0)
    assert not down.better(math.nan, 1.0) and down.better(1.0, math.nan)
    with pytest.raises(TaskError, match="needs a name"):
        MetricSpec("")


def test_a_task_without_a_metric_is_ranked_by_loss_and_still_resolves(monkeypatch):
    class Plain:
        name = "plain"

        def load_data(self, path): ...
        def build(self, info, seed): ...
        def fit(self, params, data, config, seed): ...
        def evaluate(self, params, data): ...

    module = types.ModuleType("user_tasks_for_test")
    module.instance = Plain()
    monkeypatch.setitem(sys.modules, "user_tasks_for_test", module)
    task = resolve_task("user_tasks_for_test:instance")
    assert task is module.instance
    assert metric_of(task) is LOSS_METRIC
    module.instance.metric = "accuracy"
    with pytest.raises(TaskError, match="metric must be a MetricSpec"):
        metric_of(module.instance)


def test_eval_output_as_dict_has_the_loss_and_every_metric():
    out = EvalOutput(0.5, 10, {"accuracy": 0.75})
    assert out.as_dict() == {"loss": 0.5, "accuracy": 0.75}
