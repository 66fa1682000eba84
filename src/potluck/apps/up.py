"""``up``: a whole deployment on this machine, for newcomers and tests.

Makes a fresh CA and certificates, writes each node's data (the same partition
``simulate`` uses) as NPZ files, starts one server and N node processes on 127.0.0.1
over mutual TLS, follows the run directory, and stops every child by PID at the end,
on error, or on Ctrl-C. Layout of ``<run_dir>/deployment/``::

    tls/               the CA, server and node certificates
    data/node-000.npz  each node's local data;  data/test.npz  the server's held-out set
    logs/server.log    logs/node-000.log ...
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from potluck.apps.simulate import federation_spec
from potluck.core.config import ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError, PotluckError, RoundFailed
from potluck.core.records import RoundRecord
from potluck.runtime.federation import build_federation
from potluck.runtime.rundir import RunDirectory
from potluck.transport.certs import init_ca, issue_node, issue_server

POTLUCK = [sys.executable, "-m", "potluck.cli"]


@dataclass
class UpResult:
    run_dir: Path
    records: list[RoundRecord]
    node_ids: list[str]
    stopped: str | None = None  # why the server ended before config.rounds (a privacy budget), if it did


def prepare(config: SimulationConfig, workdir: Path) -> tuple[list[str], Path]:
    """Write TLS material and data files; returns the node ids and the test file."""
    federation = build_federation(federation_spec(config))
    tls = workdir / "tls"
    init_ca(tls, force=True)
    issue_server(tls, ["127.0.0.1", "localhost"])
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for node_id, node in federation.nodes.items():
        issue_node(tls, node_id)
        x = np.concatenate([node.train.x, node.val.x])
        y = np.concatenate([node.train.y, node.val.y])
        np.savez(data_dir / f"{node_id}.npz", x=x, y=y)
    test = data_dir / "test.npz"
    np.savez(test, x=federation.test.x, y=federation.test.y)
    return list(federation.nodes), test


def server_config(config: SimulationConfig, workdir: Path, test: Path) -> ServerConfig:
    """The server's settings: every setting it shares with ``config``, its data the held-out
    ``test`` file, and the federation ``up`` starts (``--min-nodes``, and ``--dp-nodes``
    for the accountant's sampling rate, as in simulate)."""
    shared = {f.name for f in fields(ServerConfig)} & {f.name for f in fields(SimulationConfig)}
    return ServerConfig.from_mapping({
        **{name: getattr(config, name) for name in shared}, "bind": "127.0.0.1:0", "tls_dir": str(workdir / "tls"),
        "data_path": str(test), "min_nodes": config.nodes, "dp_nodes": config.nodes if config.dp != "none" else None,
    }, source="potluck up")


def server_command(config: SimulationConfig, workdir: Path, test: Path) -> list[str]:
    return [*POTLUCK, "server", "--port-file", str(workdir / "port"), *server_config(config, workdir, test).to_argv()]


def server_stop_reason(log: Path) -> str | None:
    """What the server printed after "stopped after round k: " (text or JSON logs), if anything."""
    marker = "potluck server: stopped after round "
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                line = str(json.loads(line).get("message", ""))
            except ValueError:
                continue
        if line.startswith(marker):
            return line[len(marker):].partition(": ")[2] or None
    return None


def monitoring_options(config: SimulationConfig, index: int) -> list[str]:
    """The log format and metrics flags of the ``index``-th process (0: the server, i: node i − 1).

    With ``metrics_port`` P the server serves metrics on P and node i − 1 on P + i
    (P = 0: every process picks a free port)."""
    options = ["--log-format", config.log_format]
    if config.metrics_port is not None:
        port = config.metrics_port + index if config.metrics_port else 0
        options += ["--metrics-port", str(port), "--metrics-host", config.metrics_host]
    return options


def run_up(config: SimulationConfig, on_record: Callable[[RoundRecord], None] | None = None,
           start_timeout: float = 120.0) -> UpResult:
    if config.run_dir is None:
        raise PotluckError("potluck up needs a run directory")
    if config.metrics_port and config.metrics_port + config.nodes > 65535:
        raise ConfigError(f"metrics_port {config.metrics_port} leaves no room for {config.nodes} nodes on the ports after it")
    run_dir = RunDirectory(Path(config.run_dir))
    workdir = run_dir.path / "deployment"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    node_ids, test = prepare(config, workdir)
    children: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def spawn(cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(workdir / "logs" / log_name, "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        children.append(proc)
        return proc

    try:
        server = spawn(server_command(config, workdir, test), "server.log")
        port = _wait_for_port(workdir / "port", server, workdir / "logs" / "server.log", start_timeout)
        for index, node_id in enumerate(node_ids, start=1):
            spawn([*POTLUCK, "node", "--server-address", f"127.0.0.1:{port}", "--node-id", node_id,
                   "--data-path", str(workdir / "data" / f"{node_id}.npz"), "--task", config.task,
                   "--tls-dir", str(workdir / "tls"), *monitoring_options(config, index)], f"{node_id}.log")
        seen = 0
        while True:
            records = run_dir.records() if run_dir.metrics_file.exists() else []
            for record in records[seen:]:
                if on_record is not None:
                    on_record(record)
            seen = len(records)
            if server.poll() is not None:
                break
            time.sleep(0.05)
        if server.returncode != 0:
            raise RoundFailed(f"the server exited with code {server.returncode}: {_tail(workdir / 'logs' / 'server.log')}")
        return UpResult(run_dir.path, run_dir.records(), node_ids, server_stop_reason(workdir / "logs" / "server.log"))
    finally:
        _stop_all(children)


def _wait_for_port(port_file: Path, server: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if server.poll() is not None:
            raise RoundFailed(f"the server did not start (exit code {server.returncode}): {_tail(log)}")
        time.sleep(0.05)
    raise RoundFailed(f"the server did not listen within {timeout:g} s: {_tail(log)}")


def _stop_all(children: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
