"""examples/custom_strategy.py: a coordinate-wise clipped mean, against numpy and end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from potluck import ConfigError, NonFiniteError, Params, ParamsKind, simulate
from potluck.runtime.rundir import RunDirectory

RNG = np.random.default_rng(3)
UPDATES = [RNG.normal(0, 0.2, size=(4, 3)).astype(np.float32) for _ in range(5)]
WEIGHTS = [3, 1, 4, 1, 5]


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import examples.custom_strategy as module

    return module


def delta(w, steps=None):
    arrays = {"w": w} if steps is None else {"w": w, "steps": steps}
    return Params.from_arrays(arrays, ParamsKind.DELTA)


def test_the_rule_is_the_weighted_mean_of_clipped_updates(example):
    start = Params.from_arrays({"w": np.zeros((4, 3), np.float32), "steps": np.zeros(2, np.int64)})
    aggregator = example.ClippedMean(clip=0.1).new_aggregator(start)
    for update, weight in zip(UPDATES, WEIGHTS):
        aggregator.add(delta(update, np.array([1, 2])), weight)
    expected = np.average(np.clip(np.stack(UPDATES), -0.1, 0.1), axis=0, weights=WEIGHTS)
    result = aggregator.result()
    np.testing.assert_allclose(result["w"], expected, rtol=1e-5, atol=1e-7)
    assert aggregator.count == 5 and np.abs(result["w"]).max() <= 0.1 + 1e-7
    np.testing.assert_array_equal(result["steps"], [1, 2])  # integer arrays are not clipped


def test_bad_updates_and_options_are_refused(example):
    aggregator = example.ClippedMean(clip=0.1).new_aggregator(Params.from_arrays({"w": np.zeros((4, 3), np.float32)}))
    with pytest.raises(NonFiniteError):
        aggregator.add(delta(np.full((4, 3), np.nan, np.float32)), 1)
    assert aggregator.count == 0
    with pytest.raises(ConfigError, match="option clip must be > 0, got -1"):
        example.ClippedFedAvg(clip=-1)


def test_a_clip_nothing_reaches_is_fedavg_to_the_digest(example, tmp_path):
    common = dict(task="examples.numpy_task:NumpyLogReg", rounds=2, nodes=3)
    clipped = simulate(strategy="examples.custom_strategy:ClippedFedAvg", strategy_options={"clip": 1e9},
                       run_dir=str(tmp_path / "clipped"), **common)
    fedavg = simulate(strategy="fedavg", run_dir=str(tmp_path / "fedavg"), **common)
    assert clipped.final_params.digest == fedavg.final_params.digest


def test_no_coordinate_moves_further_than_the_clip(example, tmp_path):
    example.main(rounds=2, nodes=3, clip=0.01, run_dir=str(tmp_path / "run"))
    run = RunDirectory(tmp_path / "run")
    for rnd in (1, 2):
        before, after = run.load(rnd - 1).params, run.load(rnd).params
        for name, value in after.items():
            assert np.abs(value - before[name]).max() <= 0.01 + 1e-6, (rnd, name)


@pytest.mark.slow
def test_the_cli_runs_it_by_module_name_with_options(tmp_path):
    run = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "potluck.cli", "simulate", "--task", "examples.numpy_task:NumpyLogReg",
                           "--strategy", "examples.custom_strategy:ClippedFedAvg", "-S", "clip=0.05",
                           "--rounds", "2", "--nodes", "3", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    config = (run / "config.toml").read_text()
    assert 'strategy = "examples.custom_strategy:ClippedFedAvg"' in config and "clip = 0.05" in config
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["num_nodes"] == 3
