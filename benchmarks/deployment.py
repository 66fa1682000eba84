"""Deployment over mutual TLS on 127.0.0.1.

(a) One round with 3 nodes (separate processes) and a 10M-parameter model: the
    framework's share of the round (everything but local training: the nodes push a
    ready update) against the transfer floor, i.e. the bytes moved divided by plain TLS
    socket throughput measured in the same run.
(b) The reference workload (digits, MLP, SGD lr 0.05, 1 epoch, 30 rounds) deployed with
    `potluck up --nodes 3`: total wall time and median round time.

    python benchmarks/deployment.py
"""

from __future__ import annotations

import json
import multiprocessing
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

from potluck.apps.memory import reuse_freed_memory
from potluck.backends.fleet import FleetPool
from potluck.core.messages import FitInstruction
from potluck.core.params import Params, ParamsKind
from potluck.runtime.signing import derived_key, public_bytes, sign_update
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


def _instant_node(address: str, tls: str, node_id: str, schema_digest: str, update: bytes, rounds: int) -> None:
    """A node process that 'trains' instantly: pull, push a fixed update, ``rounds`` times."""
    reuse_freed_memory()  # as `potluck node` does
    client = FleetClient(address, load_pem_bundle(Path(tls), "node", node_id))
    key = derived_key(0, node_id)  # nodes sign their updates, as `potluck node` does
    session = client.join(JoinInfo(node_id, "m", schema_digest, 10, public_key=public_bytes(key))).session
    delta = Params.decode(update)
    for _ in range(rounds):
        ins = client.pull(session, 60)
        assert ins is not None
        signed = sign_update(key, ins.run_id, ins.round, delta, 10, ins.config)
        client.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=update, signature=signed.signature))
    client.close()


def fleet_rounds(tls: Path, model: Params, nodes: int = 3, rounds: int = 3) -> tuple[list[float], int]:
    """Fit rounds with node processes that train instantly; seconds per round, bytes per round."""
    reuse_freed_memory()  # as `potluck server` does
    pool = FleetPool(run_id="bench", model_id="m", schema=model.schema, data_info_json=b"{}", heartbeat_seconds=5.0)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls, "server"), ServerOptions())
    update = Params.from_arrays({k: np.full_like(v, 0.01) for k, v in model.items()}, ParamsKind.DELTA).encode()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_instant_node, args=(f"127.0.0.1:{port}", str(tls), f"n{i}", model.schema_digest,
                                                        update, rounds)) for i in range(nodes)]
    for p in procs:
        p.start()
    try:
        if not pool.wait_for_nodes(nodes, 60):
            raise SystemExit("the node processes did not join within 60 s")
        times = []
        for rnd in range(1, rounds + 1):
            started = time.perf_counter()
            outcomes = list(pool.fit([FitInstruction(rnd, f"n{i}", model) for i in range(nodes)], 60))
            times.append(time.perf_counter() - started)
            assert all(type(o).__name__ == "FitResult" for o in outcomes), outcomes
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        server.stop(0)
    return times, nodes * (len(update) + len(model.encode()))


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
        times, moved = fleet_rounds(tls, model, rounds=5)
        seconds = median(times[1:])  # the first round also warms up the connections
        floor = median([tls_floor(tls, moved) for _ in range(5)])
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
