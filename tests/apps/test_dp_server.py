"""Local DP over gRPC: the `dp` stage reaches real node agents, and the budget stops the server."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from potluck.apps.node import NodeAgent, NodeConfig
from potluck.apps.server import run_server
from potluck.core.config import ServerConfig
from potluck.core.seeds import derive_seed
from potluck.runtime.federation import stratified_split
from potluck.tasks.builtin import load_digits
from potluck.transport.certs import init_ca, issue_node, issue_server

pytestmark = pytest.mark.slow  # a deployment: a gRPC server and training nodes until the budget stops it


def local_epsilon(z: float, rounds: int) -> float:
    accountant = RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(z / 2), rounds)  # sensitivity 2C, no sampling
    return accountant.get_epsilon(1e-5)


def test_local_dp_server_stops_at_its_budget_with_nodes_adding_noise(tmp_path):
    tls = tmp_path / "tls"
    init_ca(tls)
    issue_server(tls, ["127.0.0.1"])
    data = load_digits()
    train, _ = stratified_split(data.y, 0.2, derive_seed(0, "holdout"))
    for i, part in enumerate(np.array_split(train, 2)):
        issue_node(tls, f"n{i}")
        np.savez(tmp_path / f"n{i}.npz", x=data.x[part], y=data.y[part])

    budget = (local_epsilon(2.0, 2) + local_epsilon(2.0, 3)) / 2
    config = ServerConfig(bind="127.0.0.1:0", tls_dir=str(tls), run_dir=str(tmp_path / "run"), rounds=5, min_nodes=2,
                          fit={"epochs": 1}, round_timeout=60.0, heartbeat_seconds=0.5, dp="local",
                          dp_noise_multiplier=2.0, dp_epsilon_budget=budget)
    ready, out = threading.Event(), {}

    def serve() -> None:
        try:
            out["result"] = run_server(config, on_ready=lambda port: (out.update(port=port), ready.set()))
        except BaseException as exc:  # reported below
            out["error"] = exc
            ready.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(30) and "error" not in out
    agents = [NodeAgent(NodeConfig(f"127.0.0.1:{out['port']}", f"n{i}", str(tmp_path / f"n{i}.npz"),
                                   tls_dir=str(tls), poll_seconds=0.5)) for i in range(2)]
    for agent in agents:
        threading.Thread(target=agent.run, daemon=True).start()
    server.join(120)
    for agent in agents:
        agent.stop()
    assert not server.is_alive() and "error" not in out, out.get("error")

    result = out["result"]
    assert [r.round for r in result.records] == [1, 2] and all(r.num_nodes == 2 for r in result.records)
    assert [r.extras["epsilon"] for r in result.records] == [local_epsilon(2.0, k) for k in (1, 2)]
    assert result.stopped is not None and result.stopped.endswith("stopping after round 2")
    for i, agent in enumerate(agents):  # each node ran the "dp" stage the server's fit config named
        assert "dp" in agent._runner.update_state[f"n{i}"]
