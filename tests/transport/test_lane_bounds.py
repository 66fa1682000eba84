"""The bulk lane's handshake slots are capped per source address (issue 14, finding 4):
idle TCP connections from one host cannot lock other nodes out of the lane.

The attacker connects from 127.0.0.2 (loopback too, a different source address); the
well-behaved node from 127.0.0.1 then moves both of a round's payloads over the lane.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np

from fleet_kit import client
from potluck.backends.fleet import FleetPool
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.transport.bulk import BulkOptions
from potluck.transport.certs import load_pem_bundle
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import ServerOptions, start_server

BIG = Params.from_arrays({"w": np.arange(2**19, dtype=np.float32)})  # 2 MiB: over MIN_BULK_BYTES


@contextlib.contextmanager
def served(tls):
    pool = FleetPool(run_id="r", model_id="m", schema=BIG.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     max_payload_bytes=4 * 2**20, require_signatures=False)
    # Handshakes may take a minute here, so the attacker's connections outlive the test.
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"),
                                ServerOptions(handshake_timeout=60.0), bulk="127.0.0.1:0")
    try:
        yield pool, server, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def lane_round(pool, server, tls, address, node="b") -> None:
    """A full round whose payloads both travel over the lane."""
    c = client(tls, address, node)
    session = c.join(JoinInfo(node, "m", BIG.schema_digest, 5)).session
    outcomes: list = []
    rnd = pool.current_round + 1
    t = threading.Thread(target=lambda: outcomes.extend(pool.fit([FitInstruction(rnd, node, BIG)], 20)), daemon=True)
    t.start()
    ins = c.pull(session, 10)
    update = Params.from_arrays({"w": np.ones(2**19, np.float32)}, ParamsKind.DELTA).encode()
    assert c.push(IncomingResult(session, ins.instruction_id, ins.round, 5, payload=update)) is False
    t.join(20)
    assert isinstance(outcomes[0], FitResult)
    assert server.bulk.transfers == {"get": 1, "put": 1}  # not gRPC chunks: the lane let this node in
    c.close()


def test_idle_connections_from_one_address_do_not_lock_other_nodes_out_of_the_lane(tls):
    with served(tls) as (pool, server, address):
        port = server.bulk_port
        per_address = BulkOptions().max_handshakes_per_address
        idle = []
        try:
            for _ in range(BulkOptions().max_handshakes):
                idle.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)))
            deadline = time.monotonic() + 30  # the listener refuses the ones over the cap: wait until it has
            while pool.rejections["bulk_busy"] < len(idle) - per_address and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pool.rejections["bulk_busy"] == len(idle) - per_address
            lane_round(pool, server, tls, address)
        finally:
            for s in idle:
                s.close()
