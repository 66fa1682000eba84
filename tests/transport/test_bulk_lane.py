"""The bulk lane (transport/bulk/): payloads over a second mutual-TLS port.

Each refusal is checked for its specific error on the node's side and its counter on
the server's, then a good round over the lane shows the server still serves. The
fallback tests stop the lane under a running server: results go over gRPC instead.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time

import numpy as np
import pytest

from fleet_kit import client
from potluck.backends.fleet import FleetPool
from potluck.core.digests import payload_digest
from potluck.core.errors import AccessDenied, TransportError, UnknownId
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.transport.bulk import MIN_BULK_BYTES, BulkClient, wire
from potluck.transport.certs import load_pem_bundle
from potluck.transport.chunks import PayloadError
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import ServerOptions, bulk_address_for, start_server
from potluck.transport.v1 import fleet_pb2 as pb

BIG = Params.from_arrays({"w": np.arange(2**19, dtype=np.float32)})  # 2 MiB: over MIN_BULK_BYTES


def update(value: float = 1.0) -> bytes:
    return Params.from_arrays({"w": np.full(2**19, value, np.float32)}, ParamsKind.DELTA).encode()


@contextlib.contextmanager
def served(tls, **options):
    pool = FleetPool(run_id="r", model_id="m", schema=BIG.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     max_payload_bytes=4 * 2**20, require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"),
                                ServerOptions(**options), bulk="127.0.0.1:0")
    try:
        yield pool, server, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def fit(pool, node="a", rnd=1):
    outcomes: list = []
    t = threading.Thread(target=lambda: outcomes.extend(pool.fit([FitInstruction(rnd, node, BIG)], 60)), daemon=True)
    t.start()
    return t, outcomes


def good_round(pool, server, tls, address, node="b"):
    """A full round over the lane: both payloads counted as lane transfers."""
    before = dict(server.bulk.transfers)
    c = client(tls, address, node)
    session = c.join(JoinInfo(node, "m", BIG.schema_digest, 5)).session
    t, outcomes = fit(pool, node, pool.current_round + 1)
    ins = c.pull(session, 5)
    assert Params.decode(ins.payload).digest == BIG.digest
    assert c.push(IncomingResult(session, ins.instruction_id, ins.round, 5, payload=update())) is False
    t.join(60)
    assert isinstance(outcomes[0], FitResult)
    assert server.bulk.transfers["get"] == before.get("get", 0) + 1
    assert server.bulk.transfers["put"] == before.get("put", 0) + 1
    c.close()


def test_large_payloads_travel_over_the_lane_both_ways(tls):
    with served(tls) as (pool, server, address):
        c = client(tls, address)
        session = c.join(JoinInfo("a", "m", BIG.schema_digest, 5)).session
        assert c.lane is not None and c.lane.port == server.bulk_port != int(address.rsplit(":")[1])
        t, outcomes = fit(pool)
        ins = c.pull(session, 5)
        assert Params.decode(ins.payload).digest == BIG.digest and ins.payload_digest == payload_digest(ins.payload)
        result = IncomingResult(session, ins.instruction_id, 1, 5, payload=update(2.0))
        assert c.push(result) is False
        assert c.push(result) is True  # a repeated push over the lane is acknowledged and ignored
        t.join(60)
        assert outcomes[0].params.digest == Params.decode(update(2.0)).digest
        assert server.bulk.transfers == {"get": 1, "put": 2}


def test_small_payloads_stay_on_grpc(tls):
    small = Params.from_arrays({"w": np.zeros(16, np.float32)})
    pool = FleetPool(run_id="r", model_id="m", schema=small.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"), bulk="127.0.0.1:0")
    try:
        c = client(tls, f"127.0.0.1:{port}")
        session = c.join(JoinInfo("a", "m", small.schema_digest, 5)).session
        out: list = []
        t = threading.Thread(target=lambda: out.extend(pool.fit([FitInstruction(1, "a", small)], 60)), daemon=True)
        t.start()
        ins = c.pull(session, 5)
        c.push(IncomingResult(session, ins.instruction_id, 1, 5,
                              payload=Params.from_arrays({"w": np.ones(16, np.float32)}, ParamsKind.DELTA).encode()))
        t.join(60)
        assert isinstance(out[0], FitResult) and len(ins.payload) < MIN_BULK_BYTES
        assert not server.bulk.transfers
    finally:
        server.stop(0)


def test_a_node_with_the_lane_off_uses_grpc_chunks(tls):
    with served(tls) as (pool, server, address):
        c = client(tls, address, bulk=False)
        session = c.join(JoinInfo("a", "m", BIG.schema_digest, 5)).session
        t, outcomes = fit(pool)
        ins = c.pull(session, 5)
        c.push(IncomingResult(session, ins.instruction_id, 1, 5, payload=update()))
        t.join(60)
        assert isinstance(outcomes[0], FitResult) and c.lane is None and not server.bulk.transfers


def test_when_the_lane_fails_results_go_over_grpc_and_pulls_resume_after_a_rejoin(tls):
    with served(tls) as (pool, server, address):
        c = client(tls, address)
        session = c.join(JoinInfo("a", "m", BIG.schema_digest, 5)).session
        t, outcomes = fit(pool)
        ins = c.pull(session, 5)  # over the lane
        server.bulk.stop()  # the port closes mid-run (a firewall, a crash of the lane)
        c.push(IncomingResult(session, ins.instruction_id, 1, 5, payload=update()))  # falls back to gRPC
        t.join(60)
        assert isinstance(outcomes[0], FitResult) and server.bulk.transfers == {"get": 1}
        # A fresh node: its fetch fails, it rejoins, and gets the same instruction as gRPC chunks.
        fresh = client(tls, address, "b")
        session = fresh.join(JoinInfo("b", "m", BIG.schema_digest, 5)).session
        t, outcomes = fit(pool, "b", 2)
        with pytest.raises(TransportError, match="bulk lane"):
            fresh.pull(session, 5)
        session = fresh.join(JoinInfo("b", "m", BIG.schema_digest, 5)).session
        again = fresh.pull(session, 5)
        assert again is not None and Params.decode(again.payload).digest == BIG.digest
        fresh.push(IncomingResult(session, again.instruction_id, 2, 5, payload=update()))
        t.join(60)
        assert isinstance(outcomes[0], FitResult)


def _lane(tls, server, node="a") -> BulkClient:
    return BulkClient("127.0.0.1", server.bulk_port, load_pem_bundle(tls / "tls", "node", node), timeout=5)


def _pulled(pool, tls, address, node="a"):
    c = client(tls, address, node, bulk=False)
    session = c.join(JoinInfo(node, "m", BIG.schema_digest, 5)).session
    t, outcomes = fit(pool, node, pool.current_round + 1)
    ins = c.pull(session, 5)
    return c, session, ins, t, outcomes


def test_a_fetch_is_refused_for_another_nodes_session_and_an_unknown_instruction(tls):
    with served(tls) as (pool, server, address):
        c, session, ins, t, _ = _pulled(pool, tls, address)
        with pytest.raises(AccessDenied, match="certificate says 'b'"):
            _lane(tls, server, "b").get(session, ins.instruction_id, ins and len(ins.payload), ins.payload_digest)
        with pytest.raises(UnknownId, match="no pulled instruction"):
            _lane(tls, server).get(session, "not-an-instruction", 10, "0" * 64)
        assert pool.rejections["identity"] == 1 and pool.rejections["unknown_instruction"] == 1
        c.push(IncomingResult(session, ins.instruction_id, ins.round, 5, payload=update()))
        t.join(60)
        good_round(pool, server, tls, address)


@pytest.mark.parametrize("case", ["digest", "oversize", "truncated"])
def test_bad_pushes_over_the_lane_are_refused_with_their_reason(tls, case):
    with served(tls) as (pool, server, address):
        c, session, ins, t, outcomes = _pulled(pool, tls, address)
        payload = update()
        header = pb.ResultHeader(session=session, instruction_id=ins.instruction_id, round=1, num_examples=5,
                                 params_size=len(payload), params_blake3=payload_digest(payload))
        if case == "digest":
            header.params_blake3 = payload_digest(payload + b"x")
            with pytest.raises(PayloadError, match="digest") as caught:
                _lane(tls, server).put(header, payload)
        elif case == "oversize":
            header.params_size = 5 * 2**20
            with pytest.raises(PayloadError, match="exceeds the limit") as caught:
                _lane(tls, server).put(header, b"")
        else:
            raw = _raw_connection(tls, server)
            body = header.SerializeToString()
            raw.sendall(struct.pack(">4scI", wire.MAGIC, wire.PUT, len(body)) + body)
            assert struct.unpack(">BQ", raw.recv(9)) == (wire.CONTINUE, 0)  # the header passed its checks
            raw.sendall(payload[:1000])
            raw.close()  # the node dies mid-payload
            deadline = time.monotonic() + 60  # an upper bound: the loop ends with the count
            while not pool.rejections["payload_truncated"] and time.monotonic() < deadline:
                time.sleep(0.05)
        if case != "truncated":
            assert caught.value.reason == case
        assert pool.rejections[f"payload_{case}"] == 1
        c.push(IncomingResult(session, ins.instruction_id, 1, 5, payload=payload))  # the good one still lands
        t.join(60)
        assert isinstance(outcomes[0], FitResult)
        good_round(pool, server, tls, address)


def _raw_connection(tls, server, node="a") -> ssl.SSLSocket:
    return wire.client_context(load_pem_bundle(tls / "tls", "node", node)).wrap_socket(
        socket.create_connection(("127.0.0.1", server.bulk_port), timeout=5), server_hostname="127.0.0.1")


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(64) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_garbage_on_the_lane_is_refused_and_the_connection_closed(tls):
    with served(tls) as (pool, server, address):
        raw = _raw_connection(tls, server)
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        status, length = struct.unpack(">BQ", raw.recv(9))
        assert status == wire.ERROR and b"not a bulk-lane request" in raw.recv(length)
        assert _closed_by_server(raw)
        raw = _raw_connection(tls, server)
        raw.sendall(struct.pack(">4scI", wire.MAGIC, wire.GET, 5) + b"\xff\xff\xff\xff\xff")  # not protobuf
        status, length = struct.unpack(">BQ", raw.recv(9))
        assert status == wire.ERROR and b"malformed PayloadRequest" in raw.recv(length)
        assert _closed_by_server(raw)
        assert pool.rejections["bulk_malformed"] == 1 and pool.rejections["malformed"] == 1
        good_round(pool, server, tls, address)


def test_the_lane_wants_a_certificate_from_the_project_ca_and_drops_silent_connections(tls):
    with served(tls, handshake_timeout=0.5) as (pool, server, address):
        plain = ssl.create_default_context(cadata=(tls / "tls" / "ca.crt").read_text())
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate
            s = plain.wrap_socket(socket.create_connection(("127.0.0.1", server.bulk_port), timeout=5),
                                  server_hostname="127.0.0.1")
            s.sendall(b"PLB1")
            s.recv(1)  # TLS 1.3 reports the refused certificate on the first read
        foreign = BulkClient("127.0.0.1", server.bulk_port, load_pem_bundle(tls / "other", "node", "a"), timeout=5)
        with pytest.raises(TransportError):
            foreign.get("s", "i", 1, "0" * 64)
        silent = socket.create_connection(("127.0.0.1", server.bulk_port), timeout=5)
        assert _closed_by_server(silent)  # no handshake within handshake_timeout
        # The socket closes as the handshake fails, a moment before the server counts it;
        # the foreign client may have tried twice, so wait for the timeout's own count.
        deadline = time.monotonic() + 60
        while not pool.rejections["bulk_timeout"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.rejections["bulk_handshake"] >= 2 and pool.rejections["bulk_timeout"] == 1
        good_round(pool, server, tls, address)


def test_where_the_lane_listens():
    assert bulk_address_for("0.0.0.0:7450", 7450, "auto") == "0.0.0.0:7451"
    assert bulk_address_for("127.0.0.1:0", 40123, "auto") == "127.0.0.1:0"  # any free port
    assert bulk_address_for("[::]:7450", 7450, "auto") == "[::]:7451"
    assert bulk_address_for("0.0.0.0:7450", 7450, "off") is None
    assert bulk_address_for("0.0.0.0:7450", 7450, "10.0.0.1:9000") == "10.0.0.1:9000"


def test_an_insecure_server_has_no_lane(tls):
    pool = FleetPool(run_id="r", model_id="m", schema=BIG.schema, data_info_json=b"{}", require_signatures=False)
    server, _ = start_server(pool, "127.0.0.1:0", None, bulk="127.0.0.1:0")
    try:
        assert server.bulk is None and server.bulk_port == 0
    finally:
        server.stop(0)


def test_a_push_for_the_wrong_round_is_refused_before_its_payload_moves(tls):
    with served(tls) as (pool, server, address):
        c, session, ins, t, outcomes = _pulled(pool, tls, address)
        payload = update()
        header = pb.ResultHeader(session=session, instruction_id=ins.instruction_id, round=7, num_examples=5,
                                 params_size=len(payload), params_blake3=payload_digest(payload))
        raw = _raw_connection(tls, server)
        body = header.SerializeToString()
        raw.sendall(struct.pack(">4scI", wire.MAGIC, wire.PUT, len(body)) + body)  # no payload follows
        status, length = struct.unpack(">BQ", raw.recv(9))
        assert status == wire.ERROR and b"UnexpectedResult: result says round 7" in raw.recv(length)
        assert pool.rejections["wrong_round"] == 1 and "put" not in server.bulk.transfers
        lane = _lane(tls, server)
        header.round = 1  # the same connection's stream is still in step: the right push lands on a new one
        assert lane.put(header, payload) is False and server.bulk.transfers["put"] == 1
        t.join(60)
        assert isinstance(outcomes[0], FitResult)


def test_a_fetch_cut_short_is_a_transport_failure_and_a_dropped_connection_is_replaced(tls):
    with served(tls) as (pool, server, address):
        c = client(tls, address)
        session = c.join(JoinInfo("a", "m", BIG.schema_digest, 5)).session
        t, outcomes = fit(pool)
        ins = c.pull(session, 5)  # opens and keeps a lane connection
        deadline = time.monotonic() + 60
        while not server.bulk._open and time.monotonic() < deadline:
            time.sleep(0.01)
        with server.bulk._lock:
            kept = list(server.bulk._open)
        for conn in kept:
            wire.shut(conn)  # the server drops it (an idle timeout, a restart of the lane)
        assert c.push(IncomingResult(session, ins.instruction_id, 1, 5, payload=update())) is False
        t.join(60)
        assert isinstance(outcomes[0], FitResult) and server.bulk.transfers == {"get": 1, "put": 1}  # not gRPC
        assert c._lane() is not None  # and the lane was not marked down
    # A lane that sends fewer bytes than announced, then closes: a transport failure, not a bad payload.
    listener = socket.create_server(("127.0.0.1", 0))
    context = wire.server_context(load_pem_bundle(tls / "tls", "server"))

    def short_server() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as s:
            s.recv(4096)
            s.sendall(struct.pack(">BQ", wire.OK, 1000) + b"x" * 10)

    th = threading.Thread(target=short_server, daemon=True)
    th.start()
    lane = BulkClient("127.0.0.1", listener.getsockname()[1], load_pem_bundle(tls / "tls", "node", "a"), timeout=5)
    with pytest.raises(TransportError, match="payload ended after 10 of 1,000 bytes"):
        lane.get("s", "i", 1000, "0" * 64)
    th.join(5)
    listener.close()
