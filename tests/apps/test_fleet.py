"""A deployed run over gRPC with mutual TLS on 127.0.0.1: server and nodes in threads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ledger_kit import rewrite
from potluck.apps.node import NodeAgent, NodeConfig
from potluck.apps.server import run_server
from potluck.backends.fleet import FleetPool
from potluck.core.config import ServerConfig
from potluck.core.errors import AccessDenied, SchemaMismatch
from potluck.core.seeds import derive_seed
from potluck.ledger.audit import audit_ledger
from potluck.ledger.chain import Ledger
from potluck.ledger.signing import load_or_create_key
from potluck.ledger.watch import LedgerMismatch
from potluck.runtime.federation import stratified_split
from potluck.tasks.builtin import load_digits
from potluck.tasks.data.partition import iid
from potluck.transport.certs import init_ca, issue_node, issue_server

pytestmark = pytest.mark.slow  # deployments: a gRPC server and training nodes, several rounds


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A CA, server and node certificates, and three nodes' digits data as NPZ files."""
    root = tmp_path_factory.mktemp("fleet")
    tls = root / "tls"
    init_ca(tls)
    issue_server(tls, ["127.0.0.1", "localhost"])
    for node in ("n0", "n1", "n2", "intruder"):
        issue_node(tls, node)
    data = load_digits()
    train, _ = stratified_split(data.y, 0.2, derive_seed(0, "holdout"))
    for i, part in enumerate(iid(len(train), 3, seed=1)):
        idx = train[part]
        np.savez(root / f"n{i}.npz", x=data.x[idx], y=data.y[idx])
    return root


class Fleet:
    """Runs the server in a thread; nodes are started as threads on demand."""

    def __init__(self, root: Path, **overrides) -> None:
        self.root = root
        self.port: int | None = None
        self.ready = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        base = dict(bind="127.0.0.1:0", tls_dir=str(root / "tls"), run_dir=str(root / overrides.pop("run", "run")),
                    rounds=3, min_nodes=3, fit={"epochs": 2}, round_timeout=60.0, heartbeat_seconds=0.5)
        self.config = ServerConfig.from_mapping({**base, **overrides})
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.agents: list[NodeAgent] = []

    def _serve(self) -> None:
        try:
            self.result = run_server(self.config, on_ready=self._on_ready)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()

    def _on_ready(self, port: int) -> None:
        self.port = port
        self.ready.set()

    def start(self) -> Fleet:
        self.thread.start()
        assert self.ready.wait(300)  # an upper bound only: it returns as soon as the server listens
        return self

    def node(self, node_id: str, data: str | None = None, **kw) -> NodeAgent:
        cfg = NodeConfig(server_address=f"127.0.0.1:{self.port}", node_id=node_id,
                         data_path=str(self.root / (data or f"{node_id}.npz")), tls_dir=str(self.root / "tls"),
                         poll_seconds=0.5, **kw)
        agent = NodeAgent(cfg)
        threading.Thread(target=agent.run, daemon=True).start()
        self.agents.append(agent)
        return agent

    def finish(self, timeout: float = 600):  # an upper bound only: it returns when the run ends
        self.thread.join(timeout)
        for agent in self.agents:
            agent.stop()
        assert not self.thread.is_alive(), "server did not finish"
        if self.error:
            raise self.error
        return self.result


def test_three_nodes_over_mutual_tls_commit_every_round(deployment):
    fleet = Fleet(deployment).start()
    for node in ("n0", "n1", "n2"):
        fleet.node(node)
    result = fleet.finish()
    assert [r.round for r in result.records] == [1, 2, 3]
    assert all(r.num_nodes == 3 and not r.failures for r in result.records)
    assert result.records[-1].metrics["accuracy"] > 0.85
    assert result.records[-1].federated_metrics["accuracy"] > 0.8
    assert all(agent.rounds_done == 3 for agent in fleet.agents)
    ledger = audit_ledger(result.run_dir)  # signed by the nodes and the server, and verified by every node
    assert ledger.ok and [len(e["contributions"]) for e in ledger.entries] == [0, 3, 3, 3]
    assert all(agent.provenance.head == ledger.head for agent in fleet.agents)


def test_wrong_model_and_identity_are_refused_with_reasons(deployment):
    fleet = Fleet(deployment, run="run-refusals", rounds=1, min_nodes=2).start()
    # A node whose task trains another model.
    with pytest.raises(SchemaMismatch, match="this server trains model 'digits'"):
        NodeAgent(NodeConfig(f"127.0.0.1:{fleet.port}", "n0", str(deployment / "n0.npz"), task="digits-sklearn",
                             tls_dir=str(deployment / "tls")))._join()
    # A certificate for one node, claiming to be another.
    agent = NodeAgent(NodeConfig(f"127.0.0.1:{fleet.port}", "intruder", str(deployment / "n0.npz"),
                                 tls_dir=str(deployment / "tls")))
    agent.config = NodeConfig(f"127.0.0.1:{fleet.port}", "n1", str(deployment / "n0.npz"), tls_dir=str(deployment / "tls"))
    with pytest.raises(AccessDenied, match="does not match its certificate"):
        agent._join()
    fleet.node("n0")
    fleet.node("n1")
    result = fleet.finish()
    assert result.records[-1].num_nodes == 2
    assert result.rejections["model_id"] == 1


def test_a_node_detects_a_server_that_rewrites_its_contribution_out_of_history(deployment, monkeypatch, caplog):
    """After round 2 the server starts showing a history in which n0's round-1 update was
    never aggregated (re-signed and re-chained with its own key). n0 sees it at the next
    instruction, logs it at ERROR and, as configured, leaves; the run goes on without it."""
    pools = []
    monkeypatch.setattr("potluck.apps.server.FleetPool", lambda **kw: pools.append(FleetPool(**kw)) or pools[-1])

    class Rewriter:
        def on_commit(self, record, params, strategy):
            if record.round != 2:
                return
            pool, honest = pools[0], Path(fleet.config.run_dir) / "ledger.jsonl"
            entries = [json.loads(line) for line in honest.read_text().splitlines()]
            key = load_or_create_key(deployment / "tls" / "ledger-server.key")
            liar = Ledger(key, pool.ledger.start, run_id=pool.ledger.run_id)
            lies = rewrite(entries, 1, drop="n0", key=key)
            liar.restore(lies)
            liar.loader = lambda r: lies[r]
            pool.ledger = liar

    fleet = Fleet(deployment, run="run-rewritten", rounds=3, min_nodes=3)
    fleet.thread = threading.Thread(target=lambda: _serve_with(fleet, [Rewriter()]), daemon=True)
    fleet.start()
    left: list[BaseException] = []
    n0 = NodeAgent(NodeConfig(f"127.0.0.1:{fleet.port}", "n0", str(deployment / "n0.npz"),
                              tls_dir=str(deployment / "tls"), poll_seconds=0.5, leave_on_ledger_mismatch=True))
    threading.Thread(target=lambda: _run_catching(n0, left), daemon=True).start()
    fleet.agents.append(n0)
    fleet.node("n1")
    fleet.node("n2")
    result = fleet.finish()
    assert len(left) == 1 and isinstance(left[0], LedgerMismatch)
    assert "rewritten or forked" in str(left[0])
    assert any(r.levelname == "ERROR" and "LEDGER MISMATCH" in r.getMessage() and "n0" in r.getMessage()
               for r in caplog.records)
    assert result.records[-1].failures == {"left": 1}  # n0 left in round 3
    assert audit_ledger(result.run_dir).ok  # what is on disk is the honest history


def _serve_with(fleet: Fleet, hooks) -> None:
    try:
        fleet.result = run_server(fleet.config, hooks=hooks, on_ready=fleet._on_ready)
    except BaseException as exc:  # reported by the test
        fleet.error = exc
        fleet.ready.set()


def _run_catching(agent: NodeAgent, errors: list) -> None:
    try:
        agent.run()
    except BaseException as exc:
        errors.append(exc)


def test_secure_aggregation_runs_over_the_deployed_fleet(deployment):
    """Key agreement and unmasking travel as EXCHANGE instructions; the server sees only
    masked ring vectors (its update schema) and still commits the rounds."""
    fleet = Fleet(deployment, run="secagg-run", rounds=2, secagg=True, secagg_neighbours=2, secagg_threshold=2,
                  secagg_bits=16).start()
    for node in ("n0", "n1", "n2"):
        fleet.node(node)
    result = fleet.finish()
    assert [r.round for r in result.records] == [1, 2]
    assert all(r.num_nodes == 3 and not r.failures for r in result.records)
    assert result.records[-1].metrics["accuracy"] > 0.8
    assert audit_ledger(result.run_dir).ok
    # every node took part in the key agreement (its session is cleared once a round is unmasked)
    assert all("secagg" in agent._runner.update_state[agent.config.node_id] for agent in fleet.agents)


def test_a_node_whose_result_is_refused_keeps_serving(deployment):
    """A late (refused) result is the server's to count; the node logs it and goes on.

    Round 1 waits out its deadline for n0's result, so the deadline must be long enough
    for the other two on this machine as loaded as it is now: a multiple of a healthy
    one-round run, timed first."""
    from potluck.core.errors import UnexpectedResult

    started = time.monotonic()
    healthy = Fleet(deployment, run="refused-run-healthy", rounds=1).start()
    for node in ("n0", "n1", "n2"):
        healthy.node(node)
    assert [r.num_nodes for r in healthy.finish().records] == [3]
    deadline = max(5.0, 5 * (time.monotonic() - started))

    fleet = Fleet(deployment, run="refused-run", rounds=2, round_timeout=deadline).start()
    agents = [fleet.node(node) for node in ("n0", "n1", "n2")]
    real_push, calls = agents[0].client.push, []

    def refuse_first(result):
        calls.append(result.round)
        if len(calls) == 1:
            raise UnexpectedResult("instruction x no longer takes results: the round deadline passed")
        return real_push(result)

    agents[0].client.push = refuse_first
    result = fleet.finish()
    assert [r.round for r in result.records] == [1, 2]
    assert result.records[0].num_nodes == 2 and result.records[1].num_nodes == 3  # n0 is back in round 2
    assert agents[0].rounds_done == 1
