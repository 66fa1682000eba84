"""`potluck simulate` with differential privacy: flags, ε in the summary, the stop line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from potluck.cli.main import app

runner = CliRunner()


def test_budget_flags_stop_the_run_and_the_summary_says_why(tmp_path):
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["simulate", "--nodes", "4", "--rounds", "4", "--fit", "epochs=1",
                                 "--dp", "central", "--dp-noise-multiplier", "1.0", "--dp-epsilon-budget", "6",
                                 "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["extras"]["epsilon"] <= 6  # ε(1) ≈ 4.73, ε(2) ≈ 6.9 with σ = 1, q = 1
    assert "privacy spent" in result.output and "ε = 4.7" in result.output
    stop = [line for line in result.output.splitlines() if "privacy budget" in line]
    assert len(stop) == 1 and stop[0].startswith("privacy budget ε=6 would be exceeded in round 2 (ε would reach ")
    assert stop[0].endswith("); stopping after round 1") and stop[0].count("round 1") == 1
    assert "WARNING" not in result.output and "stopping before round" not in result.output


def test_dp_flags_are_checked(tmp_path):
    result = runner.invoke(app, ["simulate", "--dp", "global", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "dp must be one of none, central, local, distributed" in result.output
    result = runner.invoke(app, ["simulate", "--dp-clip", "2", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "dp_clip must be left at 1.0 unless dp is set" in result.output


def test_the_help_dp_example_trains_more_than_one_round():
    import shlex

    from potluck.apps.protections import round_guards
    from potluck.cli.simulate import HELP
    from potluck.core.config import SimulationConfig

    line = next(line for line in HELP.splitlines() if "--dp-epsilon-budget" in line)
    words = shlex.split(line)[2:]
    settings = {words[i][2:].replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}
    config = SimulationConfig.from_mapping({k: v if k == "dp" else float(v) if "." in v else int(v)
                                            for k, v in settings.items()})
    accountant = round_guards(config)[0]
    assert accountant.epsilon(5) <= config.dp_epsilon_budget  # several rounds before the budget stops it
