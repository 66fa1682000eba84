"""examples/numpy_task.py: a Task in plain numpy, through the protocol, the Python API and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from potluck import DataInfo, Params, TaskError


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import examples.numpy_task as module

    return module


def test_the_task_keeps_the_protocol(example):
    task, data = example.NumpyLogReg(), example.blobs(n=90, features=4, classes=3)
    start = task.build(DataInfo.from_dataset(data), seed=0)
    assert [(n, s) for n, s, _ in start.schema] == [("weight", (4, 3)), ("bias", (3,))]
    assert task.evaluate(start, data).loss == pytest.approx(math.log(3))  # zero weights: a uniform guess
    once = task.fit(start, data, {"lr": 0.5, "epochs": 3}, seed=1)
    again = task.fit(start, data, {"lr": 0.5, "epochs": 3}, seed=1)
    assert once.params.digest == again.params.digest and once.num_examples == 90  # seeded
    assert task.evaluate(once.params, data).loss < math.log(3)


def test_one_full_batch_step_is_the_softmax_gradient_step(example):
    task, data = example.NumpyLogReg(), example.blobs(n=12, features=3, classes=2)
    start = Params.from_arrays({"weight": np.full((3, 2), 0.1, np.float32), "bias": np.zeros(2, np.float32)})
    out = task.fit(start, data, {"lr": 0.1, "batch_size": 12}, seed=0)
    x, onehot = data.x.astype(np.float64), np.eye(2)[data.y]
    logits = x @ start["weight"]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.params["weight"], start["weight"] - 0.1 * x.T @ (p - onehot) / 12, rtol=1e-5)


def test_unknown_fit_settings_are_refused_before_the_run(example):
    with pytest.raises(TaskError, match="unknown fit setting 'momentum'"):
        example.NumpyLogReg().check_fit_config({"lr": 0.1, "momentum": 0.9})
    with pytest.raises(TaskError, match="lr must be a number > 0, got 0"):
        example.NumpyLogReg().check_fit_config({"lr": 0})
    with pytest.raises(TaskError, match="epochs must be a whole number ≥ 1, got 0.5"):
        example.NumpyLogReg().check_fit_config({"epochs": 0.5})
    example.NumpyLogReg().check_fit_config({"lr": 0.1, "epochs": 2, "batch_size": 16})


def test_the_python_api_run_learns(example, tmp_path):
    accuracy = example.main(rounds=3, nodes=3, run_dir=str(tmp_path / "run"))
    assert accuracy > 0.5  # three classes: a guess scores 1/3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]


def test_the_script_runs_without_torch(tmp_path):
    """As ``python examples/numpy_task.py`` (its folder first on the path), then asks what was imported."""
    code = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); "
            "runpy.run_path(sys.argv[1] + '/numpy_task.py', run_name='__main__'); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "examples")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 rounds, held-out accuracy" in done.stdout and "no torch" in done.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert 'task = "numpy_task:NumpyLogReg"' in (run / "config.toml").read_text()  # a name others can import


@pytest.mark.slow
def test_the_cli_runs_it_by_module_name_from_a_checkout(tmp_path):
    run = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "potluck.cli", "simulate", "--task", "examples.numpy_task:NumpyLogReg",
                           "--rounds", "2", "--nodes", "3", "-F", "lr=0.3", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[-1]["accuracy"] > 0.5
    assert Params.decode((run / "model.safetensors").read_bytes()).digest == lines[-1]["model_digest"]
    assert 'task = "examples.numpy_task:NumpyLogReg"' in (run / "config.toml").read_text()


def test_run_rounds_checks_a_task_learns_in_memory(example):
    from potluck.testing import run_rounds

    data = example.blobs(n=300, seed=5)
    parts = {f"n{i}": data.subset(np.arange(i, 240, 3)) for i in range(3)}
    test = data.subset(np.arange(240, 300))
    final, records = run_rounds(example.NumpyLogReg(), parts, rounds=3, fit={"lr": 0.05}, test=test)
    assert [r.round for r in records] == [1, 2, 3] and records[-1].model_digest == final.digest
    assert records[-1].loss < records[0].loss < math.log(3) and records[-1].metrics["accuracy"] > 0.5
    again, _ = run_rounds(example.NumpyLogReg(), parts, rounds=3, fit={"lr": 0.05}, test=test)
    assert again.digest == final.digest  # seeded
