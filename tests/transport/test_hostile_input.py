"""The hostile-input catalogue: each case gets its specific error, is counted by reason,
and the server completes a round with a well-behaved node afterwards."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time

import grpc
import numpy as np
import pytest

from fleet_kit import MODEL, client, delta, dispatch, join, serve_fleet, well_behaved_round
from potluck.backends.fleet import FleetPool
from potluck.core.digests import payload_digest
from potluck.core.errors import (
    AccessDenied,
    NodeResultInvalid,
    NodeTimedOut,
    NonFiniteError,
    ParamsError,
    SchemaMismatch,
    TransportError,
    UnknownId,
)
from potluck.core.params import Params, ParamsKind
from potluck.transport import frames
from potluck.transport.certs import issue_node, load_pem_bundle
from potluck.transport.client import FleetClient
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import start_server
from potluck.transport.status import error_from_rpc
from potluck.transport.v1 import fleet_pb2 as pb


def raw_push(c: FleetClient, parts: list, timeout: float = 5.0) -> grpc.RpcError:
    """Send hand-made push parts; returns the refusal."""
    push = c.channel.stream_unary("/potluck.v1.Fleet/Push", request_serializer=frames.serialize,
                                  response_deserializer=pb.PushReply.FromString)
    with pytest.raises(grpc.RpcError) as info:
        push(iter(parts), timeout=timeout)
    return info.value


def header(session: str, ins, payload: bytes, **changes) -> pb.ResultPart:
    fields = dict(session=session, instruction_id=ins.instruction_id, round=ins.round, num_examples=10,
                  params_size=len(payload), params_blake3=payload_digest(payload), run_id=ins.run_id)
    return pb.ResultPart(header=pb.ResultHeader(**{**fields, **changes}))


def pieces(payload: bytes, size: int = 64) -> list[frames.ChunkFrame]:
    return [frames.ChunkFrame(o, payload[o : o + size]) for o in range(0, len(payload), size)]


STREAMS = {
    "truncated": (lambda h, p: [h, *p[:-1]], "ended after", "payload_truncated"),
    "duplicated": (lambda h, p: [h, p[0], p[0], *p[1:]], "repeats bytes already received", "payload_duplicate"),
    "out_of_order": (lambda h, p: [h, p[1], p[0], *p[2:]], "arrived before the bytes at 0", "payload_out_of_order"),
    "two_headers": (lambda h, p: [h, p[0], h, *p[1:]], "a second header", "payload_overrun"),
    "no_header": (lambda h, p: p, "must start with a result header", "payload_truncated"),
    "digest": (lambda h, p: [h, *p[:-1], frames.ChunkFrame(p[-1].offset, b"\0" * len(p[-1].data))],
               "does not match its BLAKE3 digest", "payload_digest"),
    "garbage_part": (lambda h, p: [h, pb.ResultPart(header=pb.ResultHeader()), *p], "a second header",
                     "payload_overrun"),
}


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_bad_chunk_streams(fleet, tls, case):
    pool, address = fleet
    mutate, message, counter = STREAMS[case]
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=2)
    ins = c.pull(session, 5)
    payload = delta()
    error = raw_push(c, mutate(header(session, ins, payload), pieces(payload)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert pool.rejections[counter] == 1
    t.join(5)  # the deadline passes: the node is dropped for the round, not the run
    assert type(outcomes[0]) is NodeTimedOut and outcomes[0].node_id == "a"  # its result never arrived whole
    well_behaved_round(pool, tls, address)


def test_malformed_protobuf_is_refused_as_malformed(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    join_raw = c.channel.unary_unary("/potluck.v1.Fleet/Join", request_serializer=lambda b: b,
                                     response_deserializer=pb.JoinReply.FromString)
    with pytest.raises(grpc.RpcError) as info:
        join_raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # a string field claiming 4 GiB
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed join request" in info.value.details()
    push_raw = c.channel.stream_unary("/potluck.v1.Fleet/Push", request_serializer=lambda b: b,
                                      response_deserializer=pb.PushReply.FromString)
    with pytest.raises(grpc.RpcError) as info:
        push_raw(iter([b"\x12\x05\x12\x09abc"]), timeout=5)
    assert "malformed result part" in info.value.details()
    assert pool.rejections["malformed"] == 2
    well_behaved_round(pool, tls, address)


def test_a_result_the_wire_refuses_is_a_wire_error_on_the_node_so_it_skips_not_rejoins(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=2)
    ins = c.pull(session, 5)
    error = raw_push(c, [header(session, ins, b"", metrics={"": 1.0})])  # a metric without a name
    back = error_from_rpc(error)
    assert type(back) is WireError and "metric name '' must be 1–128 characters" in str(back)
    assert not isinstance(back, TransportError) and pool.rejections["malformed"] == 1
    t.join(5)
    well_behaved_round(pool, tls, address)


@pytest.mark.parametrize(
    ("update", "kind", "error", "counter"),
    [
        ({"v": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}, SchemaMismatch, "missing arrays ['w']",
         "result_schema"),
        ({"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}, SchemaMismatch, "'w' has shape (3, 4)",
         "result_schema"),
        ({"w": np.zeros((4, 3), np.float64), "b": np.zeros(3, np.float32)}, SchemaMismatch, "'w' has dtype float64",
         "result_schema"),
        ({"w": np.full((4, 3), np.inf, np.float32), "b": np.zeros(3, np.float32)}, NonFiniteError, "holds 12 NaN/Inf",
         "non_finite"),
    ],
    ids=["names", "shape", "dtype", "inf"],
)
def test_wrong_tensors_and_non_finite_values(fleet, tls, update, kind, error, counter):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=3)
    ins = c.pull(session, 5)
    payload = Params.from_arrays(update, ParamsKind.DELTA).encode()
    with pytest.raises(kind, match=re.escape(error)) as refused:
        c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=payload))
    assert type(refused.value) is kind  # the exact class crossed the wire, not a parent
    t.join(5)
    assert type(outcomes[0]) is NodeResultInvalid and pool.rejections[counter] == 1
    well_behaved_round(pool, tls, address)


def test_undecodable_payload(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=3)
    ins = c.pull(session, 5)
    with pytest.raises(ParamsError, match="cannot decode parameters"):
        c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=b"\x08" + bytes(40)))
    t.join(5)
    assert type(outcomes[0]) is NodeResultInvalid and pool.rejections["undecodable"] == 1
    well_behaved_round(pool, tls, address)


def test_unknown_run_and_a_replayed_result(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"])
    ins = c.pull(session, 5)
    with pytest.raises(UnknownId, match="result is for run 'other-run'; this server runs 'r1'"):
        c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=delta(), run_id="other-run"))
    first = IncomingResult(session, ins.instruction_id, 1, 10, payload=delta(0.5), run_id="r1")
    assert c.push(first) is False
    t.join(5)
    t, outcomes = dispatch(pool, ["a"], rnd=2)
    ins2 = c.pull(session, 5)
    assert c.push(first) is True  # round 1's result replayed in round 2: acknowledged, ignored
    assert c.push(IncomingResult(session, ins2.instruction_id, 2, 10, payload=delta(0.25))) is False
    t.join(5)
    assert [o.round for o in outcomes] == [2] and outcomes[0].params["w"][0, 0] == 0.25
    assert pool.rejections["unknown_run"] == 1 and pool.rejections["duplicate"] == 1
    well_behaved_round(pool, tls, address)


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_garbage_stalled_handshakes_and_silent_connections_are_closed(tls):
    with serve_fleet(tls, handshake_timeout=1.0) as (pool, address):
        host, port = _host_port(address)
        garbage = socket.create_connection((host, port))
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 64)
        silent = [socket.create_connection((host, port)) for _ in range(20)]
        stalled = socket.create_connection((host, port))
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
        well_behaved_round(pool, tls, address)  # served while those connections are held open
        deadline = time.monotonic() + 10
        for s in [garbage, stalled, *silent]:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while s.recv(4096):
                    pass  # the server's TLS alert, if any, then end of stream
            except ConnectionResetError:
                pass  # closed with a reset: also closed
            s.close()
        well_behaved_round(pool, tls, address)


def test_a_tls_client_that_never_sends_a_request_is_closed(tls):
    with serve_fleet(tls, handshake_timeout=1.0) as (pool, address):
        host, port = _host_port(address)
        bundle = tls / "tls"
        ctx = ssl.create_default_context(cafile=bundle / "ca.crt")
        ctx.load_cert_chain(bundle / "nodes" / "a.crt", bundle / "nodes" / "a.key")
        ctx.set_alpn_protocols(["h2"])
        conn = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="127.0.0.1")
        well_behaved_round(pool, tls, address)
        conn.settimeout(10)  # TLS is done but no HTTP/2 preface follows: closed after the timeout
        started = time.monotonic()
        while conn.recv(4096):
            pass  # the server's settings and GOAWAY frames, then end of stream
        assert time.monotonic() - started < 10
        conn.close()


def test_join_storm(tls):
    """Many nodes join at once (more than the server has RPC threads): every one is
    admitted or told to retry with a retryable error; a round runs afterwards."""
    names = [f"storm{i:03d}" for i in range(120)]
    for name in names:
        issue_node(tls / "tls", name)
    with serve_fleet(tls, max_workers=16) as (pool, address):
        pool.allow = None
        clients = [FleetClient(address, load_pem_bundle(tls / "tls", "node", n), call_timeout=20) for n in names]
        errors: list[Exception] = []
        barrier = threading.Barrier(len(names))

        def storm(c: FleetClient, name: str) -> None:
            barrier.wait()
            for _ in range(20):
                try:
                    c.join(JoinInfo(name, "m", MODEL.schema_digest, 10))
                    return
                except TransportError:  # busy: the node's loop backs off and retries, as here
                    time.sleep(0.05)
                except Exception as exc:  # noqa: BLE001 (collected and asserted below)
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=storm, args=(c, n)) for c, n in zip(clients, names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert set(names) <= set(pool.node_ids())
        for c in clients:
            c.close()
        pool.allow = {"a", "b", "old"}
        well_behaved_round(pool, tls, address)


# -- issue 14: bounded resources per identity (see also test_call_bounds.py, test_lane_bounds.py,
#    tests/observability/test_endpoint_bounds.py and tests/apps/test_server_start.py)

def test_a_result_may_weigh_no_more_examples_than_its_node_declared(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)  # declares 10 examples
    t, outcomes = dispatch(pool, ["a"], timeout=3)
    ins = c.pull(session, 5)
    with pytest.raises(ParamsError, match="reports 1,000,000 examples; its node declared 10 at join"):
        c.push(IncomingResult(session, ins.instruction_id, 1, 1_000_000, payload=delta()))
    t.join(5)
    assert type(outcomes[0]) is NodeResultInvalid and pool.rejections["bad_examples"] == 1
    with pytest.raises(ParamsError, match="declares 1,000,000,000 training examples; this server takes at most"):
        c.join(JoinInfo("a", "m", MODEL.schema_digest, 10**9))
    assert pool.rejections["bad_examples"] == 2
    well_behaved_round(pool, tls, address)


def test_without_tls_node_ids_are_checked_like_certificate_names():
    pool = FleetPool(run_id="r1", model_id="m", schema=MODEL.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", None)
    try:
        c = FleetClient(f"127.0.0.1:{port}", None, call_timeout=5.0)
        for bad in ("../../etc/passwd", "", "a" * 65, "-flag", "n\x00de"):
            with pytest.raises(AccessDenied, match="invalid node id"):
                c.join(JoinInfo(bad, "m", MODEL.schema_digest, 10))
        assert pool.rejections["identity"] == 5 and not pool.node_ids()
        session = c.join(JoinInfo("node-1", "m", MODEL.schema_digest, 10)).session
        t, outcomes = dispatch(pool, ["node-1"])
        ins = c.pull(session, 5)
        assert c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=delta())) is False
        t.join(5)
        assert outcomes[0].node_id == "node-1" and outcomes[0].num_examples == 10
        c.close()
    finally:
        server.stop(0)


@pytest.mark.parametrize("changes", [{"loss": float("inf")}, {"metrics": {"accuracy": float("-inf")}}],
                         ids=["loss", "metric"])
def test_an_infinite_loss_or_metric_is_refused_at_the_wire(fleet, tls, changes):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=2)
    ins = c.pull(session, 5)
    error = error_from_rpc(raw_push(c, [header(session, ins, b"", **changes)]))
    assert type(error) is WireError and "must be a finite number or NaN" in str(error)
    assert pool.rejections["malformed"] == 1
    t.join(5)
    well_behaved_round(pool, tls, address)
