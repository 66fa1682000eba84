"""Deployment with real processes on 127.0.0.1: kills, restarts, and parity with simulate."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from potluck.apps.up import prepare
from potluck.core.config import SimulationConfig
from potluck.ledger.audit import audit_ledger

POTLUCK = [sys.executable, "-m", "potluck.cli"]
pytestmark = pytest.mark.slow


class Processes:
    """Starts children with logs; stops every one of them by PID at the end."""

    def __init__(self, root: Path) -> None:
        self.root, self.children = root, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([*POTLUCK, *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.children[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll until ``predicate()``; ``timeout`` only catches a hang (a busy machine is slow, not stuck)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment(tmp_path: Path, nodes: int) -> tuple[Path, list[str], Path]:
    work = tmp_path / "deploy"
    cfg = SimulationConfig.from_mapping({"nodes": nodes, "run_dir": str(tmp_path / "unused")})
    ids, test = prepare(cfg, work)
    return work, ids, test


def node_args(work: Path, node: str, port: int) -> list[str]:
    return ["node", "--server-address", f"127.0.0.1:{port}", "--node-id", node,
            "--data-path", str(work / "data" / f"{node}.npz"), "--tls-dir", str(work / "tls")]


def server_args(work: Path, test: Path, run: Path, port: int, *extra: str) -> list[str]:
    return ["server", "--bind", f"127.0.0.1:{port}", "--tls-dir", str(work / "tls"), "--run-dir", str(run),
            "--data-path", str(test), *extra]


def test_up_matches_simulate_within_one_point(tmp_path):
    sim = subprocess.run([*POTLUCK, "simulate", "--nodes", "3", "--run-dir", str(tmp_path / "sim")],
                         capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0, sim.stderr
    up = subprocess.run([*POTLUCK, "up", "--nodes", "3", "--run-dir", str(tmp_path / "up")],
                        capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr + up.stdout
    sim_acc, up_acc = records(tmp_path / "sim")[-1]["accuracy"], records(tmp_path / "up")[-1]["accuracy"]
    assert len(records(tmp_path / "up")) == 30
    assert abs(sim_acc - up_acc) <= 0.01, (sim_acc, up_acc)
    assert "potluck up: 3 nodes over mutual TLS" in up.stdout
    assert audit_ledger(tmp_path / "sim").ok and audit_ledger(tmp_path / "up").ok


def test_up_keeps_a_ledger_that_verifies_and_every_node_checked(tmp_path):
    up = subprocess.run([*POTLUCK, "up", "--nodes", "2", "--rounds", "2", "-F", "epochs=1", "--run-dir",
                         str(tmp_path / "up")], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr + up.stdout
    verify = subprocess.run([*POTLUCK, "ledger", "verify", str(tmp_path / "up")], capture_output=True, text=True)
    assert verify.returncode == 0 and "the ledger verifies: entries 0 to 2" in verify.stdout, verify.stdout
    head = audit_ledger(tmp_path / "up").head
    for state in (tmp_path / "up" / "deployment" / "tls" / "nodes").glob("*.ledger-state.json"):
        assert json.loads(state.read_text())["head"] == head  # each node verified the whole history
    logs = "".join(p.read_text() for p in (tmp_path / "up" / "deployment" / "logs").glob("node-*.log"))
    assert "LEDGER MISMATCH" not in logs


def test_killed_node_is_dropped_and_rejoins_later(tmp_path, procs):
    work, ids, test = deployment(tmp_path, 3)
    port, run = free_port(), tmp_path / "run"
    procs.start("server", *server_args(work, test, run, port, "--rounds", "40", "--min-nodes", "3",
                                       "--quorum", "0.5", "-F", "epochs=15"))
    for node in ids:
        procs.start(node, *node_args(work, node, port))
    wait_until(lambda: len(records(run)) >= 2, 600, "two rounds")
    victim = procs.children[ids[2]]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: any(r["num_nodes"] == 2 for r in records(run)), 300, "a round without the killed node")
    procs.start(ids[2] + "-again", *node_args(work, ids[2], port))
    wait_until(lambda: procs.children["server"].poll() is not None, 900, "the run to finish")
    assert procs.children["server"].returncode == 0, procs.log("server")
    rs = records(run)
    assert [r["round"] for r in rs] == list(range(1, 41))
    dropped = [r for r in rs if r["num_nodes"] == 2]
    assert dropped and all(r["round"] > 2 and sum(r["failures"].values()) >= 1 for r in dropped)
    assert any(r["num_nodes"] == 3 for r in rs if r["round"] > dropped[-1]["round"]), "the restarted node rejoined"
    ledger = audit_ledger(run)
    assert ledger.ok and any(a["node"] == ids[2] for e in ledger.entries for a in e.get("absent", []))


def test_server_restart_resumes_and_nodes_reconnect(tmp_path, procs):
    work, ids, test = deployment(tmp_path, 2)
    port, run = free_port(), tmp_path / "run"
    args = server_args(work, test, run, port, "--rounds", "30", "--min-nodes", "2", "-F", "epochs=10")
    procs.start("server", *args)
    for node in ids:
        procs.start(node, *node_args(work, node, port))
    wait_until(lambda: len(records(run)) >= 3, 600, "three rounds")
    procs.children["server"].send_signal(signal.SIGTERM)
    assert procs.children["server"].wait(30) == 0
    assert "start again with --run-dir" in procs.log("server")
    committed = len(records(run))
    procs.start("server-again", *args)
    wait_until(lambda: procs.children["server-again"].poll() is not None, 900, "the resumed run to finish")
    assert procs.children["server-again"].returncode == 0, procs.log("server-again")
    rs = records(run)
    assert [r["round"] for r in rs] == list(range(1, 31))
    assert committed < 30 and all(r["num_nodes"] == 2 for r in rs[committed:])
    for node in ids:
        procs.children[node].wait(30)
        assert "done after" in procs.log(node)
        assert "LEDGER MISMATCH" not in procs.log(node)  # the resumed server continued the same history
    assert audit_ledger(run).ok
