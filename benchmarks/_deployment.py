"""The processes of a deployed run on this machine, and what its run directory shows.

For benchmarks/chaos.py: one `potluck server` and N `potluck node` processes, started with
the commands `potluck up` uses (`potluck.apps.up`), each logging to its own file, killed
and stopped by PID. With :class:`Namespaces` each process runs in its own network
namespace (root only) so that a node's link can be cut and restored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potluck.apps.up import POTLUCK, server_command
from potluck.core.config import SimulationConfig
from potluck.runtime.rundir import RunDirectory

ROUND_FILE = re.compile(r"^\.?round-(\d{4,})\.")  # a round's files and their temp files
NETNS_PORT = 7450


class ChaosFailed(Exception):
    """The run could not be driven to its end: budget spent, or the server failed on its own."""


# -- where processes run ------------------------------------------------------------------


class Loopback:
    """Every process on this host's 127.0.0.1."""

    def bind(self, port: int) -> str:
        return f"127.0.0.1:{port}"  # port 0 at the first start: the server picks one, restarts reuse it

    def address(self, node: int, port: int) -> str:
        return f"127.0.0.1:{port}"

    def wrap(self, host: str, cmd: list[str]) -> list[str]:
        return cmd

    def set_link(self, node: int, up: bool) -> None:
        raise ChaosFailed("links can only be cut with --netns")

    def destroy(self) -> None:
        pass


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (a probe is made and removed)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"plc-probe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Namespaces:
    """The server and each node in a network namespace; node i reaches the server over a
    veth pair on 10.214.(i+1).0/30. Only these namespaces are touched; ``destroy`` removes them."""

    def __init__(self, nodes: int) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.ns = {"srv": f"plc{self.tag}-srv", **{f"n{i}": f"plc{self.tag}-n{i}" for i in range(nodes)}}
        self.nodes = nodes

    def server_ips(self) -> list[str]:
        return [f"10.214.{i + 1}.1" for i in range(self.nodes)]

    def create(self) -> None:
        for ns in self.ns.values():
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i in range(self.nodes):
            a, b, node = f"c{self.tag}s{i}", f"c{self.tag}n{i}", self.ns[f"n{i}"]
            _sh("ip", "link", "add", a, "netns", self.ns["srv"], "type", "veth", "peer", "name", b, "netns", node)
            _sh("ip", "-n", self.ns["srv"], "addr", "add", f"10.214.{i + 1}.1/30", "dev", a)
            _sh("ip", "-n", node, "addr", "add", f"10.214.{i + 1}.2/30", "dev", b)
            _sh("ip", "-n", self.ns["srv"], "link", "set", a, "up")
            _sh("ip", "-n", node, "link", "set", b, "up")

    def bind(self, port: int) -> str:
        return f"0.0.0.0:{NETNS_PORT}"  # the namespace is this run's alone

    def address(self, node: int, port: int) -> str:
        return f"10.214.{node + 1}.1:{NETNS_PORT}"

    def wrap(self, host: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *cmd]  # `ip netns exec` execs: the PID is the command's

    def set_link(self, node: int, up: bool) -> None:
        _sh("ip", "-n", self.ns[f"n{node}"], "link", "set", f"c{self.tag}n{node}", "up" if up else "down")

    def destroy(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


# -- the processes of one run -----------------------------------------------------------


@dataclass
class Deployment:
    """One server and its nodes; children are started with logs and stopped by PID."""

    config: SimulationConfig
    work: Path  # prepare()'s folder: tls/, data/
    test: Path
    node_ids: list[str]
    net: Loopback | Namespaces
    logs: Path
    started: float = field(default_factory=time.monotonic)
    port: int = 0
    server: subprocess.Popen[bytes] | None = None
    first_spawn: float = 0.0
    spawned: float = 0.0  # monotonic and wall-clock (ns) time of the server's last start
    spawned_ns: int = 0
    finished_at: float = 0.0
    nodes: dict[int, subprocess.Popen[bytes] | None] = field(default_factory=dict)
    finished: bool = False
    crashes: list[str] = field(default_factory=list)
    nodes_told: int = 0  # nodes that exited 0: they heard the run is over
    max_backoff: float = 30.0  # the nodes' --max-backoff

    @property
    def run(self) -> RunDirectory:
        return RunDirectory(Path(str(self.config.run_dir)))

    @property
    def port_file(self) -> Path:
        return self.logs / "port"

    def _spawn(self, host: str, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.logs / log, "ab") as out:
            out.write(f"=== chaos: started at {time.monotonic() - self.started:.2f} s ===\n".encode())
            out.flush()
            return subprocess.Popen(self.net.wrap(host, cmd), stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})

    def start_server(self) -> None:
        cmd = server_command(self.config, self.work, self.test)
        cmd[cmd.index("--bind") + 1] = self.net.bind(self.port)
        cmd[cmd.index("--port-file") + 1] = str(self.port_file)
        self.port_file.unlink(missing_ok=True)
        self.spawned, self.spawned_ns = time.monotonic(), time.time_ns()
        self.first_spawn = self.first_spawn or self.spawned
        self.server = self._spawn("srv", cmd, "server.log")

    def listening(self) -> bool:
        text = self.port_file.read_text().strip() if self.port_file.exists() else ""
        if text and not self.port:
            self.port = int(text)
        return bool(text)

    def start_node(self, i: int) -> None:
        node_id = self.node_ids[i]
        self.nodes[i] = self._spawn(f"n{i}", [
            *POTLUCK, "node", "--server-address", self.net.address(i, self.port), "--node-id", node_id,
            "--data-path", str(self.work / "data" / f"{node_id}.npz"), "--task", self.config.task,
            "--tls-dir", str(self.work / "tls"), "--max-backoff", str(self.max_backoff)], f"{node_id}.log")

    def kill(self, proc: subprocess.Popen[bytes] | None) -> bool:
        """SIGKILL ``proc`` by PID; False if it had already exited."""
        if proc is None or proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return True

    def watch(self, restart_crashed: Callable[[int], None]) -> None:
        """Notice the server finishing (or failing) and nodes exiting on their own."""
        if self.server is not None and self.server.poll() is not None:
            if self.server.returncode != 0:
                raise ChaosFailed(f"the server exited with code {self.server.returncode}: {tail(self.logs / 'server.log')}")
            self.finished, self.server, self.finished_at = True, None, time.monotonic()
        for i, proc in list(self.nodes.items()):
            if proc is not None and proc.poll() is not None:
                self.nodes[i] = None
                self.nodes_told += proc.returncode == 0  # a node that heard "run finished" exits 0
                if proc.returncode != 0:
                    log = self.logs / f"{self.node_ids[i]}.log"
                    self.crashes.append(f"node {self.node_ids[i]} exited with code {proc.returncode}: {tail(log)}")
                    restart_crashed(i)

    def stop_all(self, grace: float = 10.0) -> None:
        procs = [p for p in [self.server, *self.nodes.values()] if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tail(log: Path, lines: int = 6) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- what the run directory shows ----------------------------------------------------------


def records(run: RunDirectory) -> list[dict[str, Any]]:
    """The lines of metrics.jsonl; a torn last line (being appended) is left out."""
    if not run.metrics_file.exists():
        return []
    return [json.loads(line) for line in run.metrics_file.read_text().split("\n")[:-1] if line.strip()]


def last_committed(run: RunDirectory) -> int:
    return max(run.committed_rounds(), default=-1)


def fresh_mark(run: RunDirectory, at_least: int, since_ns: int) -> bool:
    """Whether a commit mark of a round ≥ ``at_least`` was written after ``since_ns``."""
    last = last_committed(run)  # marks are written in order: the last one is the newest
    try:
        return last >= at_least and run.mark_path(last).stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


def fresh(folder: Path, wanted: Callable[[str], bool], since_ns: int) -> list[str]:
    """Names of files in ``folder`` that are ``wanted`` and were written after ``since_ns``."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if wanted(entry.name) and entry.stat().st_mtime_ns >= since_ns:
                        found.append(entry.name)
                except FileNotFoundError:
                    continue  # a temp file renamed between listing and stat
    except FileNotFoundError:
        pass  # no such folder yet
    return found


def round_files(run: RunDirectory, first: int, since_ns: int) -> list[str]:
    """Files of rounds ≥ ``first`` (temp files too) written after ``since_ns``: a commit under way."""
    def wanted(name: str) -> bool:
        m = ROUND_FILE.match(name)
        return m is not None and int(m.group(1)) >= first

    return fresh(run.checkpoints, wanted, since_ns)


def resumed(run: RunDirectory, since_ns: int) -> bool:
    """Whether a resume rewrote metrics.jsonl (its temp file counts) after ``since_ns``."""
    return bool(fresh(run.path, lambda name: name.lstrip(".").startswith("metrics.jsonl"), since_ns))
