"""SklearnLinearTask: shapes, training, nodes missing classes, and evaluation vs sklearn.metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import log_loss

from potluck.core.errors import ConfigError, TaskError
from potluck.core.params import Params
from potluck.tasks.builtin import load_digits, resolve_task
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo
from potluck.tasks.sklearn_task import SklearnLinearTask


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def split(digits) -> tuple[Dataset, Dataset]:
    return digits.subset(np.arange(600)), digits.subset(np.arange(600, 1000))


def sgd_task() -> SklearnLinearTask:
    task = resolve_task("digits-sklearn")
    assert isinstance(task, SklearnLinearTask)
    return task


def logistic_task() -> SklearnLinearTask:
    return SklearnLinearTask("digits-logreg", load_digits, estimator=lambda seed: LogisticRegression(max_iter=300))


def binary(data: Dataset) -> Dataset:
    return data.subset(np.flatnonzero(data.y < 2))


def oracle_scores(params: Params, x: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and predictions from a fresh sklearn estimator holding ``params``."""
    est = SGDClassifier()
    est.coef_ = np.array(params["coef"])
    est.intercept_ = np.array(params["intercept"])
    est.classes_ = np.arange(num_classes)
    flat = x.reshape(len(x), -1).astype(np.float64)
    decision = est.decision_function(flat)
    probs = expit(decision) if num_classes == 2 else softmax(decision, axis=1)
    return probs, est.predict(flat)


# -- build ---------------------------------------------------------------------------------


def test_build_gives_zero_coefficients(digits):
    p = sgd_task().build(DataInfo.from_dataset(digits), 0)
    assert list(p) == ["coef", "intercept"]
    assert p.schema == (("coef", (10, 64), "float64"), ("intercept", (10,), "float64"))
    assert not p["coef"].any() and not p["intercept"].any()


def test_build_for_two_classes_keeps_one_row(digits):
    p = sgd_task().build(DataInfo((8, 8), 2), 0)
    assert p["coef"].shape == (1, 64) and p["intercept"].shape == (1,)


def test_build_rejects_a_single_class():
    with pytest.raises(TaskError, match="at least 2 classes, data has 1"):
        sgd_task().build(DataInfo((4,), 1), 0)


def test_fit_and_evaluate_before_build_raise_task_error(split):
    train, _ = split
    p = Params.from_arrays({"coef": np.zeros((10, 64)), "intercept": np.zeros(10)})
    with pytest.raises(TaskError, match="build"):
        sgd_task().fit(p, train, {}, 0)
    with pytest.raises(TaskError, match="build"):
        sgd_task().evaluate(p, train)


# -- fit ---------------------------------------------------------------------------------------


def test_fit_improves_held_out_accuracy(split):
    train, test = split
    task = sgd_task()
    p = task.build(DataInfo.from_dataset(train), 0)
    before = task.evaluate(p, test)
    assert before.loss == pytest.approx(np.log(10))  # zero weights: uniform probabilities
    accuracies = []
    for call in range(2):
        out = task.fit(p, train, {"epochs": 2}, seed=call)
        assert out.num_examples == len(train)
        assert out.params.schema == p.schema
        p = out.params
        accuracies.append(task.evaluate(p, test).metrics["accuracy"])
    assert accuracies[0] > before.metrics["accuracy"] + 0.5
    assert accuracies[-1] > 0.8
    assert task.evaluate(p, test).loss < 0.6 * before.loss


def test_fit_is_deterministic_for_a_seed(split):
    train, _ = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    a = task.fit(p0, train, {}, seed=5).params
    assert task.fit(p0, train, {}, seed=5).params.digest == a.digest
    assert task.fit(p0, train, {}, seed=6).params.digest != a.digest


def test_fit_continues_from_the_given_coefficients(split):
    train, _ = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    once = task.fit(p0, train, {"epochs": 1}, seed=0).params
    twice = task.fit(once, train, {"epochs": 1}, seed=0).params
    # From zeros vs from `once`: the second call must not start over.
    assert twice != once
    assert np.linalg.norm(twice["coef"] - once["coef"]) < np.linalg.norm(once["coef"])


def test_node_lacking_classes_still_trains_with_sgd(split):
    train, test = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    node = train.subset(np.flatnonzero(train.y < 5))  # classes 5..9 absent
    out = task.fit(p0, node, {"epochs": 2}, 0)
    assert out.params.schema == p0.schema
    assert np.isfinite(out.params["coef"]).all()
    assert np.abs(out.params["coef"][:5]).sum() > 0
    seen = test.subset(np.flatnonzero(test.y < 5))
    assert task.evaluate(out.params, seen).metrics["accuracy"] > 0.8


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True, "2"])
def test_bad_epochs_raise(split, epochs):
    train, _ = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    with pytest.raises(TaskError, match="epochs must be an integer ≥ 1"):
        task.fit(p0, train, {"epochs": epochs}, 0)


def test_check_fit_config_knows_only_epochs():
    task = sgd_task()
    task.check_fit_config({"epochs": 3})
    with pytest.raises(ConfigError, match="unknown fit setting 'lr'; known: epochs"):
        task.check_fit_config({"epochs": 3, "lr": 0.1})


# -- LogisticRegression ----------------------------------------------------------------------


def test_logistic_regression_trains_on_a_node_with_every_class(split):
    train, test = split
    task = logistic_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    out = task.fit(p0, train, {}, 0)
    assert out.params.schema == p0.schema
    assert task.evaluate(out.params, test).metrics["accuracy"] > 0.85


def test_logistic_regression_on_a_node_lacking_classes_raises_task_error(split):
    train, _ = split
    task = logistic_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    node = train.subset(np.flatnonzero((train.y != 3) & (train.y != 7)))
    with pytest.raises(TaskError, match=r"LogisticRegression needs every class; this node lacks \[3, 7\]"):
        task.fit(p0, node, {}, 0)


# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_matches_sklearn_log_loss_and_predict(split):
    train, test = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    params = task.fit(p0, train.subset(np.arange(150)), {}, 0).params  # trained, but not perfect
    result = task.evaluate(params, test)

    probs, predicted = oracle_scores(params, test.x, 10)
    assert result.num_examples == len(test)
    assert result.loss == pytest.approx(log_loss(test.y, probs, labels=np.arange(10)), rel=1e-9)
    assert result.metrics["accuracy"] == pytest.approx(float((predicted == test.y).mean()), abs=1e-12)
    assert 0.3 < result.metrics["accuracy"] < 1.0


@pytest.mark.parametrize("make", [sgd_task, logistic_task], ids=["sgd", "logreg"])
def test_binary_case(split, make):
    train, test = (binary(d) for d in split)
    task = make()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    assert p0["coef"].shape == (1, 64)
    params = task.fit(p0, train, {}, 0).params
    assert params["coef"].shape == (1, 64) and params["intercept"].shape == (1,)
    result = task.evaluate(params, test)

    probs, predicted = oracle_scores(params, test.x, 2)
    assert result.loss == pytest.approx(log_loss(test.y, probs, labels=[0, 1]), rel=1e-9)
    assert result.metrics["accuracy"] == pytest.approx(float((predicted == test.y).mean()), abs=1e-12)
    assert result.metrics["accuracy"] > 0.95


def test_binary_evaluate_on_a_single_example(split):
    train, test = (binary(d) for d in split)
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    params = task.fit(p0, train, {}, 0).params
    one = test.subset(np.arange(1))
    probs, _ = oracle_scores(params, one.x, 2)
    assert task.evaluate(params, one).loss == pytest.approx(log_loss(one.y, probs, labels=[0, 1]), rel=1e-9)


def test_evaluate_on_empty_data_raises_task_error(split):
    train, _ = split
    task = sgd_task()
    p0 = task.build(DataInfo.from_dataset(train), 0)
    with pytest.raises(TaskError, match="empty"):
        task.evaluate(p0, train.subset(np.arange(0)))
