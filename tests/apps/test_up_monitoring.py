"""`potluck up` hands its log format and metrics ports on to the server and the nodes."""

from __future__ import annotations

from pathlib import Path

from potluck.apps.up import monitoring_options, server_command
from potluck.core.config import SimulationConfig


def test_the_server_gets_the_port_and_node_i_the_port_after_it():
    config = SimulationConfig.from_mapping({"nodes": 2, "metrics_port": 9400, "log_format": "json"})
    assert monitoring_options(config, 0) == ["--log-format", "json", "--metrics-port", "9400", "--metrics-host", "127.0.0.1"]
    assert monitoring_options(config, 2)[3] == "9402"
    cmd = server_command(config.replace(run_dir="r"), Path("w"), Path("t.npz"))
    assert cmd[cmd.index("--metrics-port") + 1] == "9400"


def test_port_zero_lets_every_process_pick_and_no_port_serves_nothing():
    assert monitoring_options(SimulationConfig.from_mapping({"metrics_port": 0}), 3)[3] == "0"
    assert monitoring_options(SimulationConfig(), 1) == ["--log-format", "text"]
