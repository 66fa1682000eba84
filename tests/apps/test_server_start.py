"""What a server checks and sets up at start (issue 14, finding 4): settings it cannot
meet are refused before anything is built; plaintext stays on loopback unless asked;
its run directory is private; one log line per committed round."""

from __future__ import annotations

import logging
import stat
import threading

import numpy as np
import pytest

from potluck.apps.node import NodeAgent, NodeConfig
from potluck.apps.server import run_server
from potluck.core.config import ServerConfig
from potluck.core.errors import ConfigError
from potluck.tasks.builtin import load_digits
from potluck.transport.certs import init_ca, issue_node, issue_server


def config(tmp_path, **overrides) -> ServerConfig:
    base = dict(bind="127.0.0.1:0", tls_dir=str(tmp_path / "tls"), run_dir=str(tmp_path / "run"), rounds=1,
                min_nodes=1, fit={"epochs": 1}, round_timeout=60.0, heartbeat_seconds=0.5, wait_for_nodes=60.0)
    return ServerConfig.from_mapping({**base, **overrides})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"min_nodes": 3, "allow": ["a", "b"]}, r"min_nodes=3 can never be met: the allow-list names only 2 nodes \(a, b\)"),
    ({"insecure": True, "bind": "0.0.0.0:0"}, r"binds only a loopback address, not 0.0.0.0:0 \(add --insecure-remote"),
    ({"insecure": True, "bind": "example.org:7450"}, r"not example.org:7450"),
])
def test_settings_the_server_cannot_meet_are_refused_at_start(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_server(config(tmp_path, **overrides))
    assert not (tmp_path / "run").exists()  # refused before anything was built


def test_a_server_run_is_private_and_logs_one_line_per_committed_round(tmp_path, caplog):
    tls = tmp_path / "tls"
    init_ca(tls)
    issue_server(tls, ["127.0.0.1"])
    issue_node(tls, "n0")
    data = load_digits()
    np.savez(tmp_path / "n0.npz", x=data.x[:300], y=data.y[:300])
    ready, ports = threading.Event(), []
    results: list = []

    def serve() -> None:
        try:
            results.append(run_server(config(tmp_path, rounds=2), on_ready=lambda p: (ports.append(p), ready.set())))
        finally:
            ready.set()

    server = threading.Thread(target=serve, daemon=True)
    with caplog.at_level(logging.INFO, logger="potluck.apps.server"):
        server.start()
        assert ready.wait(60) and ports
        agent = NodeAgent(NodeConfig(server_address=f"127.0.0.1:{ports[0]}", node_id="n0", tls_dir=str(tls),
                                     data_path=str(tmp_path / "n0.npz"), poll_seconds=0.5))
        threading.Thread(target=agent.run, daemon=True).start()
        server.join(180)
        agent.stop()
    assert not server.is_alive() and [r.round for r in results[0].records] == [1, 2]
    lines = [r.getMessage() for r in caplog.records if " committed: " in r.getMessage()]
    assert [line.split(" committed")[0] for line in lines] == ["round 1", "round 2"]
    run = tmp_path / "run"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    for path in run.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
