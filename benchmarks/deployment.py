"""Deployment over mutual TLS on 127.0.0.1.

(a) One round with 3 nodes (separate processes) and a 10M-parameter model: the
    framework's share of the round (everything but local training: the nodes push a
    ready update) against the transfer floor, i.e. the bytes moved divided by plain TLS
    socket throughput measured in the same run. Each round is followed by one floor
    measurement while the nodes wait, so both see the same machine; the table gives
    the ratio of the medians and the spread of the per-round ratios. Payloads go over
    the bulk lane (transport/bulk.py); the same rounds over gRPC chunks alone are shown
    for comparison.
(b) The reference workload (digits, MLP, SGD lr 0.05, 1 epoch, 30 rounds) deployed with
    `potluck up --nodes 3`: total wall time and median round time.

    python benchmarks/deployment.py                 # (a) with 10 rounds, then (b)
    python benchmarks/deployment.py --rounds 20 --skip-up
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _measure import median, table

from potluck.apps.allocator import reuse_freed_memory
from potluck.backends.fleet import FleetPool
from potluck.core.digests import payload_digest, settings_digest, update_statement
from potluck.core.messages import FitInstruction
from potluck.core.params import Params, ParamsKind
from potluck.ledger.signing import derived_key, public_bytes
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
    for _ in range(rounds):
        ins = client.pull(session, 60)
        assert ins is not None
        digest = payload_digest(update)  # one hash for the signature and the wire, as NodeProvenance.sign
        statement = update_statement(ins.run_id, ins.round, digest, 10, settings_digest(ins.config))
        client.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=update,
                                   signature=key.sign(statement), payload_digest=digest))
    client.close()


def fleet_rounds(tls: Path, model: Params, nodes: int = 3, rounds: int = 3,
                 between: Callable[[int], None] | None = None, bulk: str = "auto") -> tuple[list[float], int]:
    """Fit rounds with node processes that train instantly; seconds per round, bytes per round.
    ``between(bytes per round)`` runs after each round, while the nodes wait (the floor is
    measured there, so both see the same machine); ``bulk`` as ``start_server``'s."""
    reuse_freed_memory()  # as `potluck server` does
    pool = FleetPool(run_id="bench", model_id="m", schema=model.schema, data_info_json=b"{}", heartbeat_seconds=5.0)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls, "server"), ServerOptions(), bulk=bulk)
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
            if between is not None:
                between(nodes * (len(update) + len(model.encode())))
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds in (a), after one warm-up round")
    parser.add_argument("--skip-up", action="store_true", help="skip (b)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tls = Path(tmp) / "tls"
        init_ca(tls)
        issue_server(tls, ["127.0.0.1"])
        for i in range(3):
            issue_node(tls, f"n{i}")
        model = Params.from_arrays({"w": np.random.default_rng(0).standard_normal(10_000_000, dtype=np.float32)})
        floors: list[float] = []
        times, moved = fleet_rounds(tls, model, rounds=args.rounds + 1,
                                    between=lambda nbytes: floors.append(tls_floor(tls, nbytes)))
        seconds = median(times[1:])  # the first round also warms up the connections
        floor = median(floors[1:])
        ratios = sorted(t / f for t, f in zip(times[1:], floors[1:]))  # each round against the floor beside it
        times_grpc, _ = fleet_rounds(tls, model, rounds=args.rounds + 1, bulk="off")
        seconds_grpc = median(times_grpc[1:])
    rows = [
        ["floor: plain TLS socket, same bytes", floor, moved / MB, moved / MB / floor, "1.00"],
        ["(a) fleet round, 3 nodes, 10M params (no training)", seconds, moved / MB, moved / MB / seconds,
         f"{seconds / floor:.2f} (per round {ratios[0]:.2f}–{ratios[-1]:.2f})"],
        ["(a) the same over gRPC chunks only (--bulk off)", seconds_grpc, moved / MB, moved / MB / seconds_grpc,
         f"{seconds_grpc / floor:.2f}"],
    ]
    if not args.skip_up:
        total, per_round = up_reference()
        rows += [["(b) potluck up --nodes 3, reference workload: total", total, float("nan"), float("nan"), ""],
                 ["(b) ... median round (train + aggregate + evaluate)", per_round, float("nan"), float("nan"), ""]]
    print(table(["measurement", "seconds", "MB moved", "MB/s", "× floor"], rows))


if __name__ == "__main__":
    main()
