"""Deployment over mutual TLS on 127.0.0.1.

(a) One round with 3 nodes and a 10M-parameter model: the framework's share of the round
    (everything but local training) against the transfer floor, i.e. the bytes moved
    divided by plain TLS socket throughput measured in the same run.
(b) The reference workload (digits, MLP, SGD lr 0.05, 1 epoch, 30 rounds) deployed with
    `potluck up --nodes 3`: total wall time and median round time.

    python benchmarks/deployment.py
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _measure import median, table

from potluck.backends.fleet import FleetPool
from potluck.core.messages import FitInstruction
from potluck.core.params import Params, ParamsKind
from potluck.transport.certs import init_ca, issue_node, issue_server, load_pem_bundle
from potluck.transport.client import FleetClient
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import ServerOptions, start_server

MB = 2**20


def tls_floor(tls: Path, nbytes: int) -> float:
    """Seconds to send ``nbytes`` over one plain TLS socket on loopback (same certificates)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls / "server.crt", tls / "server.key")
    client_ctx = ssl.create_default_context(cafile=tls / "ca.crt")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            total = 0
            while total < nbytes:
                chunk = s.recv(4 * MB)
                if not chunk:
                    break
                total += len(chunk)
            received.append(total)

    t = threading.Thread(target=serve)
    t.start()
    payload = b"\x01" * (4 * MB)
    with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
        started = time.perf_counter()
        sent = 0
        while sent < nbytes:
            piece = payload[: min(len(payload), nbytes - sent)]
            s.sendall(piece)
            sent += len(piece)
        t.join()
        elapsed = time.perf_counter() - started
    listener.close()
    return elapsed


def fleet_round(tls: Path, model: Params, nodes: int = 3) -> tuple[float, int]:
    """One fit round with nodes that 'train' instantly; returns seconds and bytes moved."""
    pool = FleetPool(run_id="bench", model_id="m", schema=model.schema, data_info_json=b"{}", heartbeat_seconds=5.0)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls, "server"), ServerOptions())
    update = Params.from_arrays({k: np.full_like(v, 0.01) for k, v in model.items()}, ParamsKind.DELTA).encode()
    clients, sessions = [], []
    for i in range(nodes):
        c = FleetClient(f"127.0.0.1:{port}", load_pem_bundle(tls, "node", f"n{i}"))
        clients.append(c)
        sessions.append(c.join(JoinInfo(f"n{i}", "m", model.schema_digest, 10)).session)

    def node(i: int) -> None:
        ins = clients[i].pull(sessions[i], 30)
        assert ins is not None
        clients[i].push(IncomingResult(sessions[i], ins.instruction_id, ins.round, 10, payload=update))

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    outcomes = list(pool.fit([FitInstruction(1, f"n{i}", model) for i in range(nodes)], 60))
    elapsed = time.perf_counter() - started
    for t in threads:
        t.join()
    assert all(type(o).__name__ == "FitResult" for o in outcomes)
    for c in clients:
        c.close()
    server.stop(0)
    return elapsed, nodes * (len(update) + len(model.encode()))


def up_reference(rounds: int = 30) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "potluck.cli", "up", "--nodes", "3", "--rounds", str(rounds), "--run-dir",
               f"{tmp}/run", "-F", "lr=0.05", "-F", "epochs=1", "-F", "momentum=0.0", "-F", "batch_size=32"]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        total = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        lines = [json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    return total, median([line["seconds"] for line in lines])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tls = Path(tmp) / "tls"
        init_ca(tls)
        issue_server(tls, ["127.0.0.1"])
        for i in range(3):
            issue_node(tls, f"n{i}")
        model = Params.from_arrays({"w": np.random.default_rng(0).standard_normal(10_000_000, dtype=np.float32)})
        rounds = [fleet_round(tls, model) for _ in range(3)]
        seconds, moved = median([r[0] for r in rounds]), rounds[0][1]
        floor = median([tls_floor(tls, moved) for _ in range(3)])
    total, per_round = up_reference()
    print(table(
        ["measurement", "seconds", "MB moved", "MB/s", "× floor"],
        [
            ["floor: plain TLS socket, same bytes", floor, moved / MB, moved / MB / floor, 1.0],
            ["(a) fleet round, 3 nodes, 10M params (no training)", seconds, moved / MB, moved / MB / seconds,
             seconds / floor],
            ["(b) potluck up --nodes 3, reference workload: total", total, float("nan"), float("nan"), float("nan")],
            ["(b) ... median round (train + aggregate + evaluate)", per_round, float("nan"), float("nan"), float("nan")],
        ],
    ))


if __name__ == "__main__":
    main()
