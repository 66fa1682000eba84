"""TorchClassifierTask: state_dict ↔ Params, fit settings, training, FedProx, evaluation."""

from __future__ import annotations

from functools import partial
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

from potluck.core.errors import ConfigError, NonFiniteError, SchemaMismatch, TaskError
from potluck.core.params import Params
from potluck.tasks.builtin import load_digits
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.models import mlp
from potluck.tasks.protocol import DataInfo
from potluck.tasks.torch_task import (
    FitSettings,
    TorchClassifierTask,
    fit_settings_keys,
    load_params_into,
    params_from_module,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def train_set(digits) -> Dataset:
    return digits.subset(np.arange(300))


def make_task(**defaults) -> TorchClassifierTask:
    return TorchClassifierTask(
        "tiny", partial(mlp, hidden=(16,)), lambda path: load_digits(path), defaults=FitSettings(**defaults)
    )


def built_task(data: Dataset, seed: int = 0, **defaults) -> tuple[TorchClassifierTask, Params]:
    task = make_task(**defaults)
    return task, task.build(DataInfo.from_dataset(data), seed)


def flat(p: Params) -> np.ndarray:
    return np.concatenate([np.asarray(p[n], np.float64).ravel() for n in p])


def bn_model() -> nn.Module:
    # Names out of alphabetical order, with int64 and float buffers next to parameters.
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


# -- state_dict <-> Params ------------------------------------------------------------


def test_params_from_module_then_load_params_into_round_trip():
    torch.manual_seed(0)
    source = bn_model()
    source.train()
    source(torch.randn(8, 5))  # moves BatchNorm's running stats and counter
    params = params_from_module(source)

    state = source.state_dict()
    assert list(params) == list(state)
    assert params["1.num_batches_tracked"].dtype == np.int64
    for name, tensor in state.items():
        np.testing.assert_array_equal(params[name], tensor.numpy())

    torch.manual_seed(1)
    target = bn_model()
    assert not torch.equal(target[0].weight, source[0].weight)
    load_params_into(target, params)
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert params_from_module(target) == params


def test_params_from_module_copies():
    model = bn_model()
    params = params_from_module(model)
    before = params["0.weight"].copy()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    np.testing.assert_array_equal(params["0.weight"], before)


def test_load_params_into_rejects_a_wrong_schema():
    model = bn_model()
    good = params_from_module(model)
    other_shape = params_from_module(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)))
    with pytest.raises(SchemaMismatch, match=r"'0.weight' has shape \(6, 5\), expected \(4, 5\)"):
        load_params_into(model, other_shape)
    missing = Params.from_arrays({k: v for k, v in good.items() if k != "3.bias"})
    with pytest.raises(SchemaMismatch, match=r"missing arrays \['3.bias'\]"):
        load_params_into(model, missing)
    as_float64 = Params.from_arrays({k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in good.items()})
    with pytest.raises(SchemaMismatch, match="dtype float64, expected float32"):
        load_params_into(model, as_float64)
    # Nothing was half-copied.
    assert params_from_module(model) == good


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", float("nan")),
        ("lr", "0.1"),
        ("optimizer", "rmsprop"),
        ("epochs", 0),
        ("epochs", 1.5),
        ("batch_size", True),
        ("batch_size", 0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("proximal_mu", -1.0),
        ("proximal_mu", float("inf")),
    ],
)
def test_fit_settings_validation_names_the_setting(name, value):
    with pytest.raises(ConfigError, match=rf"fit setting {name} must be .*got {value!r}"):
        FitSettings.from_config({name: value})
    with pytest.raises(ConfigError, match=rf"fit setting {name}"):
        make_task(**{name: value})  # bad defaults are caught at construction


def test_fit_settings_merge_config_over_defaults_and_ignore_other_keys():
    defaults = FitSettings(lr=0.2, epochs=3)
    s = FitSettings.from_config({"epochs": 2, "batch_size": 8, "server_round": 4}, defaults)
    assert (s.lr, s.epochs, s.batch_size, s.optimizer) == (0.2, 2, 8, "sgd")
    assert set(fit_settings_keys()) == {"optimizer", "lr", "momentum", "weight_decay", "epochs",
                                        "batch_size", "proximal_mu", "device", "amp"}


def test_check_fit_config_rejects_unknown_and_invalid_settings():
    task = make_task()
    task.check_fit_config({"lr": 0.1, "epochs": 2, "optimizer": "adam"})
    with pytest.raises(ConfigError, match=r"task tiny: unknown fit setting 'epoch'; known: optimizer, lr"):
        task.check_fit_config({"epoch": 2})
    with pytest.raises(ConfigError, match="fit setting batch_size"):
        task.check_fit_config({"batch_size": -1})


# -- lifecycle ------------------------------------------------------------------------------


def test_fit_and_evaluate_before_build_raise_task_error(train_set):
    task = make_task()
    params = params_from_module(mlp(DataInfo((64,), 10), hidden=(16,)))
    with pytest.raises(TaskError, match="build"):
        task.fit(params, train_set, {}, 0)
    with pytest.raises(TaskError, match="build"):
        task.evaluate(params, train_set)


def test_build_is_seeded(train_set):
    info = DataInfo.from_dataset(train_set)
    assert make_task().build(info, 3) == make_task().build(info, 3)
    assert make_task().build(info, 3) != make_task().build(info, 4)


def test_fit_with_foreign_params_raises_schema_mismatch(train_set):
    task, _ = built_task(train_set)
    with pytest.raises(SchemaMismatch):
        task.fit(Params.from_arrays({"w": np.zeros(3, np.float32)}), train_set, {}, 0)


# -- training -----------------------------------------------------------------------------


def test_fit_is_deterministic_for_a_seed(train_set):
    task, p0 = built_task(train_set)
    a = task.fit(p0, train_set, {"epochs": 2}, seed=7)
    b = task.fit(p0, train_set, {"epochs": 2}, seed=7)
    c = task.fit(p0, train_set, {"epochs": 2}, seed=8)
    assert a.params.digest == b.params.digest
    assert a.metrics == b.metrics
    assert c.params.digest != a.params.digest
    assert a.params.digest != p0.digest
    # A second task object (another process, say) gives the same result.
    other, q0 = built_task(train_set)
    assert q0 == p0
    assert other.fit(q0, train_set, {"epochs": 2}, seed=7).params.digest == a.params.digest


def test_fit_reports_examples_and_keeps_the_schema(train_set):
    task, p0 = built_task(train_set)
    out = task.fit(p0, train_set, {"batch_size": 1000}, 0)  # one batch bigger than the data
    assert out.num_examples == len(train_set)
    assert out.params.schema == p0.schema
    assert np.isfinite(out.metrics["train_loss"])


def test_fit_reduces_training_loss(train_set):
    task, params = built_task(train_set, lr=0.1, momentum=0.9, epochs=2)
    losses = [task.evaluate(params, train_set).loss]
    for call in range(3):
        params = task.fit(params, train_set, {}, seed=call).params
        losses.append(task.evaluate(params, train_set).loss)
    assert all(later < earlier for earlier, later in pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0]
    assert task.evaluate(params, train_set).metrics["accuracy"] > 0.8


def test_adam_trains_and_differs_from_sgd(train_set):
    task, p0 = built_task(train_set)
    sgd = task.fit(p0, train_set, {"epochs": 2}, 0)
    adam = task.fit(p0, train_set, {"epochs": 2, "optimizer": "adam", "lr": 0.01}, 0)
    assert sgd.params != adam.params
    assert task.evaluate(adam.params, train_set).loss < task.evaluate(p0, train_set).loss


def test_fedprox_term_keeps_weights_near_the_start(train_set):
    task, p0 = built_task(train_set)
    config = {"epochs": 6, "lr": 0.005}  # lr·μ = 0.5: the proximal pull is stable
    free = task.fit(p0, train_set, {**config, "proximal_mu": 0.0}, seed=1).params
    held = task.fit(p0, train_set, {**config, "proximal_mu": 100.0}, seed=1).params
    start = flat(p0)
    free_distance = np.linalg.norm(flat(free) - start)
    held_distance = np.linalg.norm(flat(held) - start)
    assert free_distance > 0 and held_distance > 0
    assert held_distance < 0.1 * free_distance, (held_distance, free_distance)


def deep_linear(info: DataInfo) -> nn.Module:
    # No ReLU to die: with a huge lr the weights blow up to Inf and the loss to NaN.
    # (The ReLU MLP above just goes dead at lr=1e10 and keeps a large finite loss.)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, info.num_classes))


def test_divergent_training_raises_non_finite_error(train_set):
    task = TorchClassifierTask("linear", deep_linear, load_digits)
    p0 = task.build(DataInfo.from_dataset(train_set), 0)
    assert np.isfinite(task.fit(p0, train_set, {"lr": 0.05, "epochs": 3}, 0).metrics["train_loss"])  # control
    with pytest.raises(NonFiniteError, match="task linear: training loss became nan"):
        task.fit(p0, train_set, {"lr": 1e6, "epochs": 3}, 0)


# -- evaluation -------------------------------------------------------------------------------


def numpy_mlp_logits(p: Params, x: np.ndarray) -> np.ndarray:
    """Flatten → Linear → ReLU → Linear, in float64 numpy (the oracle)."""
    h = np.maximum(x.reshape(len(x), -1) @ p["1.weight"].astype(np.float64).T + p["1.bias"], 0.0)
    return h @ p["3.weight"].astype(np.float64).T + p["3.bias"]


def test_evaluate_matches_an_independent_computation(digits):
    task, p0 = built_task(digits, seed=2)
    params = task.fit(p0, digits.subset(np.arange(200)), {"epochs": 2}, 0).params
    # More rows than evaluate's 4096-row chunk, so chunking is covered too.
    rows = np.arange(5000) % len(digits)
    data = digits.subset(rows)
    result = task.evaluate(params, data)

    logits = numpy_mlp_logits(params, data.x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    oracle_loss = -log_probs[np.arange(len(rows)), data.y].mean()
    oracle_accuracy = (logits.argmax(axis=1) == data.y).mean()

    assert result.num_examples == 5000
    assert result.loss == pytest.approx(oracle_loss, rel=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(oracle_accuracy, abs=1 / 5000)
    assert 0.1 < result.metrics["accuracy"] < 1.0  # a model that is neither untrained nor perfect

    torch_loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(data.y))
    assert result.loss == pytest.approx(float(torch_loss), rel=1e-5)


def test_evaluate_on_empty_data_raises_task_error(train_set):
    task, p0 = built_task(train_set)
    with pytest.raises(TaskError, match="empty"):
        task.evaluate(p0, train_set.subset(np.arange(0)))
