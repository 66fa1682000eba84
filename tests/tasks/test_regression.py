"""The regression task against least squares (numpy's lstsq as the oracle), and its CSV reader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo, metric_of
from potluck.tasks.regression import RegressionTask, read_regression_csv, target_deciles


def write_csv(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = x @ np.array([1.5, -2.0, 0.5, 3.0]) + 4.0 + rng.normal(scale=0.3, size=n)
    rows = ["a,b,site,c,d,price"] + [f"{r[0]},{r[1]},s{i % 3},{r[2]},{r[3]},{t}" for i, (r, t) in enumerate(zip(x, y))]
    path.write_text("\n".join(rows) + "\n")
    return x, y


def test_a_linear_model_reaches_the_least_squares_error(tmp_path):
    x, y = write_csv(tmp_path / "d.csv")
    task = resolve_task("regression", label_column="price", group_column="site", options={"hidden": 0})
    data = task.load_data(tmp_path / "d.csv")
    assert data.x.shape == (300, 4) and sorted(set(data.groups)) == ["s0", "s1", "s2"]
    params = task.build(DataInfo.from_dataset(data), seed=0)
    trained = task.fit(params, data, {"epochs": 400, "batch_size": 300, "lr": 0.05}, seed=0).params
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    best = float(np.mean((design @ coef - y) ** 2))  # the least MSE any linear model can reach
    out = task.evaluate(trained, data)
    assert 0.9999 * best <= out.metrics["mse"] <= 1.02 * best  # float32 training: a hair of rounding
    assert out.loss == out.metrics["mse"] and out.metrics["rmse"] == pytest.approx(math.sqrt(out.loss))
    assert out.metrics["r2"] == pytest.approx(1 - best / np.var(y), abs=1e-3)
    np.testing.assert_allclose(trained["0.weight"][0], coef[:4], atol=0.02)


def test_the_primary_metric_is_mse_lower_better_and_the_mlp_trains(tmp_path):
    write_csv(tmp_path / "d.csv")
    task = RegressionTask(target_column="price", group_column="site", hidden=8)
    assert metric_of(task).name == "mse" and not metric_of(task).higher_is_better
    data = task.load_data(tmp_path / "d.csv")
    params = task.build(DataInfo.from_dataset(data), seed=0)
    before = task.evaluate(params, data).loss
    after = task.evaluate(task.fit(params, data, {"epochs": 20}, seed=0).params, data).loss
    assert after < 0.2 * before


def test_deciles_cut_at_the_quantiles():
    d = target_deciles(np.arange(100.0))
    assert np.bincount(d).tolist() == [10] * 10
    assert (target_deciles(np.ones(7)) == target_deciles(np.ones(7))[0]).all()


def test_csv_errors_name_the_problem(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,y\n1,2,3\n1,x,4\n")
    with pytest.raises(DataError, match="line 3: column 'b' value 'x' is not a number"):
        read_regression_csv(p, "y")
    with pytest.raises(DataError, match="no target column 'price'; the columns are: a, b, y"):
        read_regression_csv(p, "price")
    p.write_text("a,y\n1,nan\n2,3\n")
    with pytest.raises(DataError, match="NaN or infinite"):
        read_regression_csv(p, "y")
    with pytest.raises(DataError, match="pass --data-path"):
        read_regression_csv(None, "y")


def test_settings_are_checked(tmp_path):
    task = RegressionTask(hidden=4)
    with pytest.raises(ConfigError, match="hidden=8 shapes the model"):
        task.check_fit_config({"hidden": 8})
    with pytest.raises(ConfigError, match="unknown fit setting 'steps'"):
        task.check_fit_config({"steps": 3})
    with pytest.raises(ConfigError, match="hidden must be an integer ≥ 0"):
        RegressionTask(hidden=-1)
