"""A server killed after its last commit and started again still tells its nodes the run
is over (found by benchmarks/chaos.py: the nodes, backing off while it was down, were
never told and retried forever)."""

from __future__ import annotations

import threading
import time

import pytest

from potluck.apps.node import NodeAgent, NodeConfig
from potluck.apps.server import run_server
from potluck.apps.up import prepare
from potluck.core.config import ServerConfig, SimulationConfig

pytestmark = pytest.mark.slow  # deployments: a gRPC server started twice, training nodes


def serve(config: ServerConfig) -> tuple[threading.Thread, list[int], dict]:
    ports: list[int] = []
    ready, out = threading.Event(), {}

    def target() -> None:
        try:
            out["result"] = run_server(config, on_ready=lambda port: (ports.append(port), ready.set()))
        except BaseException as exc:  # reported by the test
            out["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(300) and "error" not in out, out
    return thread, ports, out


def agent(work, node_id: str, port: int) -> tuple[NodeAgent, threading.Thread]:
    node = NodeAgent(NodeConfig(server_address=f"127.0.0.1:{port}", node_id=node_id,
                                data_path=str(work / "data" / f"{node_id}.npz"), tls_dir=str(work / "tls"),
                                poll_seconds=0.5))
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    return node, thread


def test_restart_after_the_last_commit_tells_returning_nodes_the_run_is_over(tmp_path):
    work = tmp_path / "deploy"
    ids, test = prepare(SimulationConfig.from_mapping({"nodes": 2, "run_dir": str(tmp_path / "unused")}), work)
    config = ServerConfig.from_mapping({
        "bind": "127.0.0.1:0", "tls_dir": str(work / "tls"), "run_dir": str(tmp_path / "run"),
        "data_path": str(test), "rounds": 1, "min_nodes": 2, "fit": {"epochs": 1}, "heartbeat_seconds": 0.5})
    first, ports, out = serve(config)
    nodes = [agent(work, node_id, ports[0]) for node_id in ids]
    first.join(300)  # upper bounds only, here and below: each returns when its thread ends
    assert "result" in out, out
    for _, thread in nodes:
        thread.join(120)
        assert not thread.is_alive()

    # As after a SIGKILL between the last commit and telling the nodes: every round is
    # committed, and the nodes are backing off, so they come back after the restart.
    again, ports, out = serve(config.replace(bind=f"127.0.0.1:{ports[0]}"))
    time.sleep(1.0)
    returning = [agent(work, node_id, ports[0]) for node_id in ids]
    try:
        for _, thread in returning:
            thread.join(120)
            assert not thread.is_alive(), "a node that came back was never told the run is over"
        again.join(120)
        assert not again.is_alive() and out["result"].resumed_from == 1
    finally:
        for node, _ in returning:
            node.stop()
