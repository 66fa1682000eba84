"""`potluck simulate --attack/--attack-fraction` and the robust strategies on the command line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from potluck.cli import simulate as simulate_cli
from potluck.cli.main import app

runner = CliRunner()


def test_flags_reach_the_config(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(simulate_cli, "_run", lambda cfg, *rest: seen.append(cfg))
    args = ["simulate", "--run-dir", str(tmp_path), "--nodes", "20", "--attack", "scale", "--attack-fraction", "0.2",
            "--strategy", "multi-krum", "-S", "byzantine=4", "-S", "select=12"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert (cfg.attack, cfg.attack_fraction, cfg.strategy) == ("scale", 0.2, "multi-krum")
    assert cfg.strategy_options == {"byzantine": 4, "select": 12}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "flip", "--attack-fraction", "0.2"], "attack must be one of none, sign-flip, scale, random"),
        (["--attack-fraction", "0.2"], "attack_fraction must be 0 when attack is none"),
        (["--attack", "random"], "attack_fraction must be large enough for at least one of the 10 nodes"),
        (["--strategy", "krum", "-S", "byzantine=0.5"], "option byzantine must be a whole number >= 0"),
        (["--strategy", "krum", "-S", "byzantine=4"], "needs at least 11 updates per round, but a round samples 10 of 10"),
    ],
)
def test_bad_attack_settings_give_one_line_and_exit_code_2(tmp_path, args, message):
    result = runner.invoke(app, ["simulate", "--run-dir", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_help_shows_the_attack_flags_and_robust_strategies():
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--attack", "--attack-fraction", "median", "trimmed-mean", "multi-krum", "norm-bound", "krum"):
        assert text in result.output, text
