"""Every refusal at the wire, with its specific error on both sides; the server keeps serving."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from fleet_kit import MODEL, client, delta, dispatch, join, well_behaved_round
from potluck.backends.fleet import FleetPool
from potluck.core.digests import payload_digest
from potluck.core.errors import AccessDenied, NodeFailed, SchemaMismatch, TransportError, UnexpectedResult, UnknownId
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.transport.certs import load_pem_bundle
from potluck.transport.chunks import PayloadError
from potluck.transport.client import FleetClient
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import ServerOptions, start_server
from potluck.transport.v1 import fleet_pb2 as pb
from potluck.transport.v1 import fleet_pb2_grpc as pb_grpc


def test_a_round_and_an_idempotent_repeat_push(fleet, tls):
    pool, address = fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"])
    ins = c.pull(session, 5)
    result = IncomingResult(session, ins.instruction_id, 1, 10, payload=delta(0.5))
    assert c.push(result) is False
    assert c.push(result) is True  # acknowledged, ignored
    t.join(60)
    assert len(outcomes) == 1 and outcomes[0].params["w"][0, 0] == 0.5


def test_plaintext_client_is_refused(fleet, tls):
    pool, address = fleet
    with pytest.raises(TransportError):
        FleetClient(address, None, call_timeout=3.0).join(JoinInfo("a", "m", MODEL.schema_digest, 1))
    well_behaved_round(pool, tls, address)


def test_certificate_from_another_ca_is_refused(fleet, tls):
    pool, address = fleet
    with pytest.raises(TransportError):
        join(client(tls, address, "a", folder="other"))
    well_behaved_round(pool, tls, address)


def test_expired_certificate_is_refused(fleet, tls):
    pool, address = fleet
    with pytest.raises(TransportError):
        join(client(tls, address, "old"), "old")
    well_behaved_round(pool, tls, address)


def test_node_not_on_the_allow_list(fleet, tls):
    pool, address = fleet
    with pytest.raises(AccessDenied, match="'stranger' is not on this server's allow-list"):
        join(client(tls, address, "stranger"), "stranger")
    assert pool.rejections["not_allowed"] == 1
    well_behaved_round(pool, tls, address)


def test_schema_mismatch_and_identity_mismatch(fleet, tls):
    pool, address = fleet
    with pytest.raises(SchemaMismatch, match="builds parameters with schema"):
        join(client(tls, address), schema="0" * 64)
    with pytest.raises(AccessDenied, match="does not match its certificate"):
        join(client(tls, address, "a"), node="b")
    assert pool.rejections["schema"] == 1 and pool.rejections["identity"] == 1
    well_behaved_round(pool, tls, address)


def test_digest_mismatch_is_refused(clocked_fleet, tls):
    pool, address, clock = clocked_fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=3)
    ins = c.pull(session, 5)
    stub = pb_grpc.FleetStub(c.channel)
    payload = delta()
    header = pb.ResultHeader(session=session, instruction_id=ins.instruction_id, round=1, num_examples=10,
                             params_size=len(payload), params_blake3=payload_digest(b"other"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Push(iter([pb.ResultPart(header=header), pb.ResultPart(chunk=pb.Chunk(offset=0, data=payload))]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "BLAKE3" in info.value.details()
    clock.advance(3)  # the deadline passes: the node is dropped for the round
    t.join(60)
    assert [type(o).__name__ for o in outcomes] == ["NodeTimedOut"] and outcomes[0].node_id == "a"
    well_behaved_round(pool, tls, address)


def test_wrong_round_other_nodes_instruction_unknown_id_and_late(clocked_fleet, tls):
    pool, address, clock = clocked_fleet
    ca, cb = client(tls, address, "a"), client(tls, address, "b")
    sa, sb = join(ca, "a"), join(cb, "b")
    t, outcomes = dispatch(pool, ["a"], rnd=4, timeout=2)
    ins = ca.pull(sa, 5)
    with pytest.raises(UnexpectedResult, match="result says round 3, its instruction was for round 4"):
        ca.push(IncomingResult(sa, ins.instruction_id, 3, 10, payload=delta()))
    with pytest.raises(UnexpectedResult, match="was given to node 'a', not 'b'"):
        cb.push(IncomingResult(sb, ins.instruction_id, 4, 10, payload=delta()))
    with pytest.raises(UnknownId, match="no instruction"):
        ca.push(IncomingResult(sa, "deadbeef", 4, 10, payload=delta()))
    with pytest.raises(UnknownId, match="unknown or expired session"):
        ca.push(IncomingResult("nosuchsession", ins.instruction_id, 4, 10, payload=delta()))
    clock.advance(2)  # the deadline passes
    t.join(60)
    assert type(outcomes[0]).__name__ == "NodeTimedOut"
    with pytest.raises(UnexpectedResult, match="round deadline passed"):
        ca.push(IncomingResult(sa, ins.instruction_id, 4, 10, payload=delta()))
    assert pool.rejections["late"] == 1 and pool.rejections["wrong_round"] == 1
    well_behaved_round(pool, tls, address)


def test_oversized_stream_nan_update_and_wrong_shape(clocked_fleet, tls):
    pool, address, clock = clocked_fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"], timeout=3)
    ins = c.pull(session, 5)
    big = Params.from_arrays({"w": np.zeros(600_000, np.float32)}, ParamsKind.DELTA).encode()
    with pytest.raises(PayloadError, match="exceeds the limit"):
        c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=big))
    nan = Params.from_arrays({"w": np.full((4, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)},
                             ParamsKind.DELTA).encode()
    from potluck.core.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="'w' holds 12 NaN/Inf values"):
        c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=nan))
    t.join(60)  # a refused update ends the node's round at once, long before the (fake) deadline
    assert isinstance(outcomes[0], NodeFailed) and "NaN" in str(outcomes[0])
    t, outcomes = dispatch(pool, ["a"], rnd=2, timeout=3)
    ins = c.pull(session, 5)
    wrong = Params.from_arrays({"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}).encode()
    with pytest.raises(SchemaMismatch, match="'w' has shape"):
        c.push(IncomingResult(session, ins.instruction_id, 2, 10, payload=wrong))
    t.join(60)
    assert isinstance(outcomes[0], NodeFailed) and "shape" in str(outcomes[0])
    well_behaved_round(pool, tls, address)


@pytest.mark.parametrize("bulk", ["off", "127.0.0.1:0"])
def test_model_larger_than_the_message_limit_transfers(tls, bulk):
    """A 64 MiB model through an 8 MiB gRPC message limit, both directions: as gRPC
    chunks, and over the bulk lane (transport/bulk/)."""
    model = Params.from_arrays({"w": np.arange(16 * 2**20, dtype=np.float32)})
    pool = FleetPool(run_id="r", model_id="m", schema=model.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"),
                                ServerOptions(max_message_bytes=8 * 2**20, chunk_bytes=4 * 2**20), bulk=bulk)
    try:
        c = client(tls, f"127.0.0.1:{port}", max_message_bytes=8 * 2**20, chunk_bytes=4 * 2**20)
        session = c.join(JoinInfo("a", "m", model.schema_digest, 5)).session
        outcomes: list = []
        t = threading.Thread(target=lambda: outcomes.extend(pool.fit([FitInstruction(1, "a", model)], 60)))
        t.start()
        ins = c.pull(session, 10)
        assert len(ins.payload) > 64 * 2**20 and Params.decode(ins.payload).digest == model.digest
        update = Params.from_arrays({"w": np.ones(16 * 2**20, np.float32)}, ParamsKind.DELTA)
        c.push(IncomingResult(session, ins.instruction_id, 1, 5, payload=update.encode()))
        t.join(30)
        assert outcomes[0].params.digest == update.digest
        assert (server.bulk is None) if bulk == "off" else server.bulk.transfers == {"get": 1, "put": 1}
    finally:
        server.stop(0)


def test_the_server_keeps_what_each_node_reported_at_join(fleet, tls):
    pool, address = fleet
    client(tls, address, "b").join(JoinInfo("b", "m", MODEL.schema_digest, 42, cpus=3, memory_bytes=5 << 30, gpus=2))
    info = pool.node_info("b")
    assert (info.num_examples, info.cpus, info.memory_bytes, info.gpus) == (42, 3, 5 << 30, 2)
    assert pool.node_info("nobody") is None


def test_a_node_that_restarts_mid_round_is_given_its_instruction_again(fleet, tls):
    pool, address = fleet
    first = client(tls, address)
    session = join(first)
    t, outcomes = dispatch(pool, ["a"], timeout=20)
    lost = first.pull(session, 5)  # pulled, then the process dies with it
    first.close()
    again = client(tls, address)
    session = join(again)  # the restarted node rejoins
    ins = again.pull(session, 5)
    assert ins is not None and ins.instruction_id == lost.instruction_id
    assert again.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=delta())) is False
    t.join(60)
    assert not t.is_alive() and isinstance(outcomes[0], FitResult)  # answered long before the 20 s deadline
