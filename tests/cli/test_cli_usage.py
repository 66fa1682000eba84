"""What a newcomer meets first: parser errors as one line, exit codes, ``--version``,
a task module beside them, and a new run directory for every run."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from potluck.apps.simulate import default_run_dir
from potluck.cli.main import app, potluck_version
from potluck.core.config import SimulationConfig

runner = CliRunner()


@pytest.mark.parametrize(("args", "message"), [
    (["simulate", "--nodes", "abc"], "potluck: error: Invalid value for '--nodes'"),
    (["simulate", "--no-such-flag"], "potluck: error: No such option: --no-such-flag"),
    (["ledger", "proof"], "potluck: error: Missing argument 'RUN_DIR'"),
    (["no-such-command"], "potluck: error: No such command 'no-such-command'"),
])
def test_parser_errors_are_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "--help" in lines[0] and "╭" not in result.output


def test_version_prints_the_installed_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"potluck {potluck_version()}"
    assert potluck_version()[0].isdigit()


def test_help_still_works():
    assert runner.invoke(app, ["simulate", "--help"]).exit_code == 0


def test_a_failed_start_leaves_no_progress_line_and_no_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["simulate", "--task", "no-such-task"])
    assert result.exit_code == 2
    assert "round" not in result.output and "unknown task 'no-such-task'" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_task_module_in_the_current_directory_imports_without_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "potluck_cwd_task_xyz.py").write_text(
        "from potluck.tasks.builtin import resolve_task\ntask = resolve_task('digits-sklearn')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = runner.invoke(app, ["simulate", "--task", "potluck_cwd_task_xyz:task", "--rounds", "1", "--nodes", "2",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    sys.modules.pop("potluck_cwd_task_xyz", None)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-120000")
    config = SimulationConfig(task="mytask:task")
    made = [default_run_dir(config, tmp_path) for _ in range(3)]
    assert [p.name for p in made] == ["20260101-120000-mytask-task", "20260101-120000-mytask-task-2",
                                      "20260101-120000-mytask-task-3"]
    assert all(p.is_dir() for p in made)


def test_a_server_without_tls_files_leaves_nothing_that_blocks_the_next_start(tmp_path):
    args = ["server", "--rounds", "1", "--tls-dir", str(tmp_path / "tls"), "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "missing TLS files for the server" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "tls").exists()
    again = runner.invoke(app, [*args, "--strategy", "fedadam"])  # other settings: no old run to refuse them
    assert again.exit_code == 1 and "missing TLS files" in again.output and "other settings" not in again.output
