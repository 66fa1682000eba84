"""The potluck peer commands: help that helps, and clear refusals."""

from __future__ import annotations

from typer.testing import CliRunner

from potluck.cli.main import app


def test_help_of_peer_and_peer_up():
    runner = CliRunner()
    top = runner.invoke(app, ["peer", "--help"])
    assert top.exit_code == 0 and "--bootstrap" in top.output and "up" in top.output
    up = runner.invoke(app, ["peer", "up", "--help"])
    assert up.exit_code == 0 and "--peers" in up.output and "--rounds" in up.output


def test_bad_options_are_refused_with_the_reason(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["peer", "--tls-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "--peer-id is required" in missing.output
    bad = runner.invoke(app, ["peer", "--peer-id", "a", "--bootstrap", "nohostport", "--tls-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output
    no_cert = runner.invoke(app, ["peer", "--peer-id", "a", "--tls-dir", str(tmp_path), "--run-dir", str(tmp_path / "r")])
    assert no_cert.exit_code == 1 and "potluck peer cert a" in no_cert.output
    assert runner.invoke(app, ["peer", "up", "--peers", "0"]).exit_code == 2
    wildcard = runner.invoke(app, ["peer", "--peer-id", "a", "--host", "0.0.0.0", "--tls-dir", str(tmp_path)])
    assert wildcard.exit_code == 2 and "--advertise" in wildcard.output


def test_peer_simulate_names_forgers_and_liars_and_refuses_an_unknown_rule():
    runner = CliRunner()
    result = runner.invoke(app, ["peer", "simulate", "--peers", "4", "--outer-steps", "1", "--group-size", "4",
                                 "--averaging", "median", "--forgers", "1", "--liars", "1"])
    assert result.exit_code == 0, result.output
    assert "refused peer-" in result.output and "equivocators peer-" in result.output
    bad = runner.invoke(app, ["peer", "simulate", "--averaging", "krum"])
    assert bad.exit_code != 0 and "--averaging must be one of" in bad.output
