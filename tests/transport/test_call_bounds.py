"""Bounded resources per identity (issue 14, findings 1 and 2), over real gRPC and mutual TLS.

A push is refused from its header, before any payload is read: the attacker's stream
here sends a header announcing hundreds of MiB and then blocks, so a server that waited
for the payload would never answer. One identity holds at most ``calls_per_node`` calls;
calls that send nothing are cancelled at their server-side deadline; an identity not on
the allow-list holds nothing. Each case ends with a well-behaved node completing a round.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from fleet_kit import MODEL, client, delta, dispatch, join, well_behaved_round
from potluck.backends.fleet import FleetPool
from potluck.core.digests import payload_digest
from potluck.core.messages import FitResult
from potluck.transport import frames
from potluck.transport.certs import load_pem_bundle
from potluck.transport.fleet_messages import IncomingResult
from potluck.transport.server import FleetServer, ServerOptions, start_server
from potluck.transport.v1 import fleet_pb2 as pb

HUGE = 512 * 2**20


@contextlib.contextmanager
def serve(tls, **options) -> Iterator[tuple[FleetPool, str, FleetServer]]:
    """A pool with the default payload cap (2 GiB), served over mutual TLS."""
    pool = FleetPool(run_id="r1", model_id="m", schema=MODEL.schema, data_info_json=b"{}", allow={"a", "b"},
                     heartbeat_seconds=1.0, require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"),
                                ServerOptions(**{"max_message_bytes": 1 << 20, "chunk_bytes": 1 << 18, **options}),
                                ledger=pool, bulk="off")
    try:
        yield pool, f"127.0.0.1:{port}", server
    finally:
        server.stop(0)


class Stalled:
    """Requests that send ``first`` (if any), then nothing until :meth:`release`."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def parts(self, *first: object) -> Iterator[object]:
        yield from first
        self.gate.wait(60)

    def release(self) -> None:
        self.gate.set()


def raw_stream(channel: grpc.Channel, method: str, serializer=frames.serialize):
    return channel.stream_unary(f"/potluck.v1.Fleet/{method}", request_serializer=serializer,
                                response_deserializer=lambda b: b)


def huge_header(session: str, instruction_id: str, rnd: int = 1) -> pb.ResultPart:
    return pb.ResultPart(header=pb.ResultHeader(session=session, instruction_id=instruction_id, round=rnd,
                                                num_examples=10, params_size=HUGE,
                                                params_blake3=payload_digest(b"x"), run_id="r1"))


def refusal(future: grpc.Future, within: float = 30.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=within)
    return info.value


def test_a_push_is_refused_from_its_header_before_any_payload_is_read(tls):
    with serve(tls) as (pool, address, _):
        stalled = Stalled()
        try:
            stranger = client(tls, address, "stranger")  # a valid certificate, not on the allow-list
            error = refusal(raw_stream(stranger.channel, "Push").future(stalled.parts(huge_header("s", "i"))))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'stranger' is not on this server's allow-list" in error.details()
            c = client(tls, address)
            session = join(c)
            error = refusal(raw_stream(c.channel, "Push").future(stalled.parts(huge_header(session, "nope"))))
            assert error.code() == grpc.StatusCode.NOT_FOUND and "no instruction 'nope'" in error.details()
            t, outcomes = dispatch(pool, ["a"], timeout=3)
            ins = c.pull(session, 5)
            error = refusal(raw_stream(c.channel, "Push").future(stalled.parts(huge_header(session, ins.instruction_id))))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            limit = len(delta()) + 4096
            assert f"exceeds the limit of {limit:,} bytes" in error.details()  # the update's size, not 2 GiB
            t.join(10)
        finally:
            stalled.release()
        assert pool.rejections["not_allowed"] == 1 and pool.rejections["unknown_instruction"] == 1
        assert pool.rejections["payload_oversize"] == 1
        well_behaved_round(pool, tls, address)


def test_one_identity_holds_at_most_its_slots_while_another_node_completes_rounds(tls):
    with serve(tls, max_workers=16, calls_per_node=4, io_timeout=60.0) as (pool, address, server):
        stalled = Stalled()
        attacker = client(tls, address, "a")
        try:
            calls = [raw_stream(attacker.channel, "Push").future(stalled.parts()) for _ in range(30)]
            calls += [raw_stream(attacker.channel, "Heartbeat", lambda b: b).future(stalled.parts())
                      for _ in range(10)]  # unary calls whose request never comes
            deadline = time.monotonic() + 30
            while sum(c.done() for c in calls) < len(calls) - 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = [c for c in calls if c.done()]
            assert len(refused) == len(calls) - 4 and server.guard.held("a") == 4
            assert all(c.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED for c in refused)
            well_behaved_round(pool, tls, address)  # served while "a" holds every slot it may
            well_behaved_round(pool, tls, address)
            assert server.guard.held("a") == 4
        finally:
            stalled.release()
        assert pool.rejections["busy"] >= 1


def test_a_call_that_sends_nothing_is_cancelled_at_its_server_side_deadline(tls):
    with serve(tls, calls_per_node=2, io_timeout=1.0) as (pool, address, server):
        stalled = Stalled()
        c = client(tls, address, "a")
        session = join(c)
        t, outcomes = dispatch(pool, ["a"], timeout=30)
        ins = c.pull(session, 5)
        try:
            silent = raw_stream(c.channel, "Push").future(stalled.parts())
            header_only = pb.ResultPart(header=pb.ResultHeader(session=session, instruction_id=ins.instruction_id,
                                                               round=1, num_examples=10, params_size=64,
                                                               params_blake3=payload_digest(bytes(64))))
            trickle = raw_stream(c.channel, "Push").future(stalled.parts(header_only))
            for call in (silent, trickle):
                assert refusal(call).code() == grpc.StatusCode.CANCELLED  # no client deadline: the server's
        finally:
            stalled.release()
        # The client hears CANCELLED before the server's thread has left the call: wait
        # (bounded) for both slots to come back rather than racing that thread.
        released = time.monotonic() + 30
        while server.guard.held("a") and time.monotonic() < released:
            time.sleep(0.01)
        assert pool.rejections["deadline"] == 2 and server.guard.held("a") == 0
        assert c.push(IncomingResult(session, ins.instruction_id, 1, 10, payload=delta())) is False
        t.join(10)
        assert isinstance(outcomes[0], FitResult)
        well_behaved_round(pool, tls, address)


def test_an_identity_not_on_the_allow_list_is_refused_at_once_and_holds_nothing(tls):
    with serve(tls, max_workers=16, calls_per_node=4, io_timeout=60.0) as (pool, address, server):
        stalled = Stalled()
        stranger = client(tls, address, "stranger")
        try:
            calls = [raw_stream(stranger.channel, "Push").future(stalled.parts()) for _ in range(40)]
            for call in calls:
                assert refusal(call).code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert server.guard.held("stranger") == 0 and pool.rejections["not_allowed"] >= 1
            well_behaved_round(pool, tls, address)
        finally:
            stalled.release()


def test_pull_with_a_wait_that_is_not_a_finite_number_is_refused(tls):
    with serve(tls) as (pool, address, _):
        c = client(tls, address, "a")
        session = join(c)
        pull = c.channel.unary_stream("/potluck.v1.Fleet/Pull", request_serializer=pb.PullRequest.SerializeToString,
                                      response_deserializer=lambda b: b)
        for wait in (float("nan"), float("inf")):
            with pytest.raises(grpc.RpcError) as info:
                list(pull(pb.PullRequest(session=session, wait_seconds=wait), timeout=10))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "wait_seconds must be a finite number" in info.value.details()
        assert pool.rejections["malformed"] == 2
        well_behaved_round(pool, tls, address)
