"""The monitoring options of every command: checked like any other option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.cli.output import metrics_url
from potluck.core.config import ServerConfig, SimulationConfig

runner = CliRunner()


@pytest.mark.parametrize("args", [
    ["server", "--metrics-port", "70000"],
    ["server", "--log-format", "yaml"],
    ["simulate", "--metrics-port", "-1"],
    ["simulate", "--log-format", "xml"],
    ["up", "--metrics-port", "65535", "--nodes", "3"],
    ["node", "--server-address", "x:1", "--data-path", "d", "--node-id", "n", "--log-format", "yaml"],
])
def test_bad_monitoring_options_are_usage_errors(args, tmp_path):
    result = runner.invoke(app, [*args, *(["--run-dir", str(tmp_path / "run")] if args[0] == "up" else [])])
    assert result.exit_code == 2, result.output
    assert "metrics" in result.output or "log" in result.output


def test_node_metrics_port_is_range_checked():
    result = runner.invoke(app, ["node", "--server-address", "x:1", "--data-path", "d", "--node-id", "n",
                                 "--metrics-port", "65536"])
    assert result.exit_code == 2


@pytest.mark.parametrize("cls", [ServerConfig, SimulationConfig])
def test_configs_take_the_monitoring_settings_from_toml(cls, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('metrics_port = 9400\nmetrics_host = "0.0.0.0"\nlog_format = "json"\n')
    config = cls.load(path)
    assert (config.metrics_port, config.metrics_host, config.log_format) == (9400, "0.0.0.0", "json")
    default = cls()
    assert (default.metrics_port, default.metrics_host, default.log_format) == (None, "127.0.0.1", "text")


def test_metrics_url_brackets_ipv6():
    assert metrics_url("127.0.0.1", 9400) == "http://127.0.0.1:9400/metrics"
    assert metrics_url("::1", 9400) == "http://[::1]:9400/metrics"
