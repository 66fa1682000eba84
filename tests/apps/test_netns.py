"""Server and two nodes on separate test hosts (network namespaces this test creates);
one node's link is cut mid-run and restored, and the run completes.

Addresses are only inside the namespaces made here; everything is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_deploy_processes import records, wait_until

from potluck.apps.up import prepare
from potluck.core.config import SimulationConfig
from potluck.transport.certs import issue_server

pytestmark = pytest.mark.slow
PORT = 7451


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def namespaces_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"pl-probe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """srv ↔ n1 on 10.213.1.0/30 and srv ↔ n2 on 10.213.2.0/30, via veth pairs."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.ns = {name: f"pl{tag}-{name}" for name in ("srv", "n1", "n2")}
        self.links: dict[str, str] = {}

    def create(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, node in ((1, "n1"), (2, "n2")):
            a, b = f"{self.ns['srv'][-7:]}s{i}", f"{self.ns['srv'][-7:]}n{i}"
            sh("ip", "link", "add", a, "netns", self.ns["srv"], "type", "veth", "peer", "name", b, "netns", self.ns[node])
            sh("ip", "-n", self.ns["srv"], "addr", "add", f"10.213.{i}.1/30", "dev", a)
            sh("ip", "-n", self.ns[node], "addr", "add", f"10.213.{i}.2/30", "dev", b)
            sh("ip", "-n", self.ns["srv"], "link", "set", a, "up")
            sh("ip", "-n", self.ns[node], "link", "set", b, "up")
            self.links[node] = b

    def set_link(self, node: str, up: bool) -> None:
        sh("ip", "-n", self.ns[node], "link", "set", self.links[node], "up" if up else "down")

    def run(self, host: str, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.ns[host], sys.executable, "-m", "potluck.cli", *args],
                                    stdout=out, stderr=subprocess.STDOUT)

    def destroy(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_cut_and_restored_link_run_completes(tmp_path):
    reason = namespaces_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "deploy"
    ids, test = prepare(SimulationConfig.from_mapping({"nodes": 2, "run_dir": str(tmp_path / "x")}), work)
    issue_server(work / "tls", ["10.213.1.1", "10.213.2.1"])
    hosts, procs = Hosts(), []
    run = tmp_path / "run"
    try:
        hosts.create()
        procs.append(hosts.run("srv", ["server", "--bind", f"0.0.0.0:{PORT}", "--tls-dir", str(work / "tls"),
                                       "--run-dir", str(run), "--data-path", str(test), "--rounds", "25",
                                       "--min-nodes", "2", "--quorum", "0.5", "--round-timeout", "60",
                                       "-F", "epochs=10"], tmp_path / "server.log"))
        for i, (node, host) in enumerate(zip(ids, ("n1", "n2")), start=1):
            procs.append(hosts.run(host, ["node", "--server-address", f"10.213.{i}.1:{PORT}", "--node-id", node,
                                          "--data-path", str(work / "data" / f"{node}.npz"),
                                          "--tls-dir", str(work / "tls")], tmp_path / f"{node}.log"))
        wait_until(lambda: len(records(run)) >= 3, 120, "three rounds")
        hosts.set_link("n1", up=False)
        # The round in flight commits without it (quorum 0.5); later rounds wait for 2 nodes.
        wait_until(lambda: any(r["num_nodes"] == 1 for r in records(run)), 60, "a round without the cut node")
        hosts.set_link("n1", up=True)
        wait_until(lambda: procs[0].poll() is not None, 300, "the run to finish")
        server_log = (tmp_path / "server.log").read_text()
        assert procs[0].returncode == 0, server_log
        rs = records(run)
        assert [r["round"] for r in rs] == list(range(1, 26))
        cut = [r["round"] for r in rs if r["num_nodes"] == 1]
        assert cut and any(r["num_nodes"] == 2 for r in rs if r["round"] > cut[-1]), "the node came back"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        hosts.destroy()
