"""`potluck simulate` as a user runs it: a real process, its exit code and its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.core.params import Params

POTLUCK = [sys.executable, "-m", "potluck.cli"]


def potluck(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run the CLI; the default timeout only catches a hang (a busy machine is slow, not stuck)."""
    return subprocess.run([*POTLUCK, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_default_simulation_reaches_93_percent(tmp_path):
    done = potluck("simulate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = metrics(run_dir)
    assert len(lines) == 30 and all(line["num_nodes"] == 10 for line in lines)
    assert lines[-1]["accuracy"] >= 0.93
    assert "accuracy (held-out)" in done.stdout and str(run_dir.name) in done.stdout
    assert Params.decode((run_dir / "model.safetensors").read_bytes()).digest == lines[-1]["model_digest"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_digest(tmp_path):
    args = ["simulate", "--rounds", "8", "--nodes", "6", "--fit", "epochs=1"]
    started = time.monotonic()
    whole = potluck(*args, "--run-dir", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    patience = 3 * (time.monotonic() - started) + 30  # from this machine's speed now, not a fixed figure

    proc = subprocess.Popen([*POTLUCK, *args, "--run-dir", "cut"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks = tmp_path / "cut" / "checkpoints"
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline and not (marks / "round-0003.json").exists():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=patience)
    killed_at = len(list(marks.glob("round-*.json"))) - 1
    assert 3 <= killed_at < 8, "the run should have been killed part-way"

    resumed = potluck(*args, "--run-dir", "cut", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after round {killed_at}" in resumed.stdout
    assert metrics(tmp_path / "cut")[-1]["model_digest"] == metrics(tmp_path / "whole")[-1]["model_digest"]
    assert [m["round"] for m in metrics(tmp_path / "cut")] == list(range(1, 9))


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--strategy", "fedsgd"], 2, "unknown strategy 'fedsgd'"),
        (["--nodes", "0"], 2, "nodes must be ≥ 1"),
        (["--partition", "random"], 2, "partition must be one of iid, dirichlet, shards, natural"),
        (["-S", "server_lr=-1", "--strategy", "fedadam"], 2, "server_lr"),
        (["-S", "nonsense"], 2, "--strategy-option takes KEY=VALUE"),
        (["-F", "lr=0"], 2, "fit setting lr must be > 0"),
        (["-F", "learning_rate=0.1"], 2, "unknown fit setting 'learning_rate'"),
        (["--task", "mlp", "--data-path", "/nonexistent/data.csv"], 2, "/nonexistent/data.csv does not exist"),
        (["--task", "nosuchmodule:task"], 2, "cannot import module 'nosuchmodule'"),
        (["--task", "nosuch"], 2, "unknown task 'nosuch'"),
        (["--config", "/nonexistent.toml"], 2, "config file /nonexistent.toml does not exist"),
    ],
)
def test_bad_input_gives_one_line_reason_and_exit_code(tmp_path, args, code, message):
    result = runner.invoke(app, ["simulate", "--run-dir", str(tmp_path / "run"), *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_toml_values_name_the_file_and_key(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('rounds = "ten"\n')
    result = runner.invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 2 and f"{config}: rounds must be an integer, got 'ten'" in result.output
    config.write_text("rounds = 3\nspeed = 9\n")
    result = runner.invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 2 and "unknown setting 'speed'" in result.output
    config.write_text("rounds = [\n")
    result = runner.invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 2 and "invalid TOML" in result.output


def test_config_file_runs_and_flags_win(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('nodes = 3\nrounds = 5\nstrategy = "fedavgm"\n[fit]\nepochs = 1\n[strategy_options]\nmomentum = 0.5\n')
    result = runner.invoke(app, ["simulate", "--config", str(config), "--rounds", "2", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = metrics(tmp_path / "r")
    assert [line["round"] for line in lines] == [1, 2] and lines[0]["num_nodes"] == 3
    stored = (tmp_path / "r" / "config.toml").read_text()
    assert "momentum = 0.5" in stored and 'strategy = "fedavgm"' in stored and "rounds = 2" in stored


def test_help_lists_the_options():
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--task", "--data-path", "--nodes", "--rounds", "--fraction", "--strategy", "--partition",
                   "--alpha", "--seed", "--workers", "--run-dir", "--config", "--resume"):
        assert option in result.output
