"""The node's side of the wire: one channel to the server, seven calls.

Every failed call raises a potluck error (via :func:`~potluck.transport.status.error_from_rpc`):
the server's own refusal with its specific kind, or :class:`TransportError` when the
server cannot be reached or failed, which the node loop answers with backoff and a
rejoin. A refused result (``UnexpectedResult``, a ``ParamsError`` such as ``WireError``)
is skipped, not retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from potluck.core.errors import TransportError
from potluck.transport import convert, frames
from potluck.transport.addresses import split_address
from potluck.transport.bulk import MIN_BULK_BYTES, BulkClient
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    PayloadError,
    Reassembly,
    split,
)
from potluck.transport.fleet_messages import (
    HeartbeatInfo,
    IncomingResult,
    JoinInfo,
    LedgerHeaders,
    OutgoingInstruction,
    ProofInfo,
    Welcome,
)
from potluck.transport.status import error_from_rpc
from potluck.transport.v1 import fleet_pb2 as pb
from potluck.transport.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
LANE_RETRY_SECONDS = 60.0  # after the bulk lane failed, payloads go over gRPC this long


class FleetClient:
    """``tls=None`` connects in plaintext (only for servers started with --insecure).
    ``address`` is HOST:PORT (ConfigError otherwise).

    Large payloads go over the server's bulk lane (``bulk/``) when it announces one at
    join and ``bulk`` is on; if the lane fails, over gRPC chunks for a while.
    """

    def __init__(
        self,
        address: str,
        tls: PemBundle | None,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = 8 * 2**20,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        call_timeout: float = 60.0,
        bulk: bool = True,
    ) -> None:
        self.host = split_address(address, "server address")[0]
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A cut link sends no reset: pings find a dead connection in seconds, not minutes.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=opts)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
            self.channel = grpc.secure_channel(address, creds, options=opts)
        self.stub = pb_grpc.FleetStub(self.channel)
        # The two payload-carrying calls frame their chunks by hand (see frames.py).
        self._pull = self.channel.unary_stream(
            "/potluck.v1.Fleet/Pull", request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=frames.parser(pb.InstructionPart),
        )
        self._push = self.channel.stream_unary(
            "/potluck.v1.Fleet/Push", request_serializer=frames.serialize, response_deserializer=pb.PushReply.FromString,
        )
        self.chunk_bytes, self.max_payload_bytes, self.call_timeout = chunk_bytes, max_payload_bytes, call_timeout
        self.address, self.tls, self.use_bulk = address, tls, bulk and tls is not None
        self.lane: BulkClient | None = None
        self._lane_down_until = 0.0
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self.lane is not None:
            self.lane.close()
        self.channel.close()

    def _open_lane(self, port: int) -> None:
        if self.lane is not None and self.lane.port == port:
            return
        if self.lane is not None:
            self.lane.close()
        self.lane = None
        if self.use_bulk and port and self.tls is not None:
            # No progress for 30 s on the lane is a dead link (gRPC's keepalive finds one in 15 s).
            self.lane = BulkClient(self.host, port, self.tls, timeout=min(self.call_timeout, 30.0))

    def _lane(self) -> BulkClient | None:
        """The bulk lane, unless there is none or it failed within LANE_RETRY_SECONDS."""
        return self.lane if self.lane is not None and time.monotonic() >= self._lane_down_until else None

    def _lane_failed(self, exc: TransportError) -> None:
        assert self.lane is not None
        log.warning("bulk lane %s:%d failed (%s); payloads go over gRPC for %.0f s", self.lane.host, self.lane.port,
                    exc, LANE_RETRY_SECONDS)
        self._lane_down_until = time.monotonic() + LANE_RETRY_SECONDS

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """A refused call as its potluck error (status.py); a call after :meth:`close` as
        a TransportError, not grpc's ValueError."""
        try:
            yield
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        except ValueError as exc:
            if self._closed:
                raise TransportError(f"the connection to {self.address} was closed by this node") from exc
            raise

    def join(self, info: JoinInfo) -> Welcome:
        with self._calling():
            r = self.stub.Join(convert.join_to_proto(info), timeout=self.call_timeout)
        self._open_lane(r.bulk_port)
        return convert.welcome_from_proto(r)

    def pull(self, session: str, wait: float) -> OutgoingInstruction | None:
        """The next instruction, or ``None`` if none came within ``wait`` seconds."""
        with self._calling():
            deadline = wait + min(self.call_timeout, 10.0)  # a long-poll that overruns this is a dead link
            lane = self._lane()
            request = convert.build_message(pb.PullRequest, "pull request", session=session, wait_seconds=wait,
                                            bulk=lane is not None)
            parts = self._pull(request, timeout=deadline)
            first = next(parts, None)
            if first is None:
                return None
            if frames.chunk_of(first) is not None:
                raise PayloadError("truncated", "an instruction must start with its header")
            h = first.header
            if h.params_size > self.max_payload_bytes:
                raise PayloadError("oversize", f"payload of {h.params_size:,} bytes exceeds the limit of "
                                               f"{self.max_payload_bytes:,} bytes")
            payload = self._lane_payload(session, h, parts, lane) if h.params_via_bulk else self._chunks(h, parts)
        return convert.instruction_from_proto(h, payload)

    def _lane_payload(self, session: str, h: pb.InstructionHeader, parts: Iterator[Any],
                      lane: BulkClient | None) -> memoryview:
        if lane is None:
            raise PayloadError("truncated", "the server sent a payload over a bulk lane this node did not ask for")
        if next(parts, None) is not None:
            raise PayloadError("overrun", "chunks after a header that sends its payload over the bulk lane")
        try:
            return lane.get(session, h.instruction_id, h.params_size, h.params_blake3)
        except TransportError as exc:
            self._lane_failed(exc)
            raise  # the node rejoins; the server hands the instruction out again, then over gRPC

    def _chunks(self, h: pb.InstructionHeader, parts: Iterator[Any]) -> bytes:
        assembly = Reassembly(h.params_size, h.params_blake3, self.max_payload_bytes)
        for part in parts:
            chunk = frames.chunk_of(part)
            if chunk is None:
                raise PayloadError("overrun", "a second header inside one instruction")
            assembly.add(chunk.data, chunk.offset)
        return assembly.finish()

    def push(self, result: IncomingResult) -> bool:
        """Send a result; returns True if the server had it already (a repeat)."""
        header = convert.result_to_proto(result)
        lane = self._lane() if len(result.payload) >= MIN_BULK_BYTES else None
        if lane is not None:
            try:
                return lane.put(header, result.payload)
            except TransportError as exc:
                self._lane_failed(exc)  # and send it over gRPC below

        def parts() -> Iterator[pb.ResultPart | frames.ChunkFrame]:
            yield pb.ResultPart(header=header)
            for offset, piece in split(result.payload, self.chunk_bytes):
                yield frames.ChunkFrame(offset, piece)

        with self._calling():
            reply = self._push(parts(), timeout=self.call_timeout + len(result.payload) / 1e6)
        return bool(reply.duplicate)

    def heartbeat(self, session: str, ledger_head: str = "") -> HeartbeatInfo:
        """``ledger_head``: the last ledger head this node verified, if it checks the ledger."""
        request = convert.build_message(pb.HeartbeatRequest, "heartbeat", session=session, ledger_head=ledger_head)
        with self._calling():
            r = self.stub.Heartbeat(request, timeout=self.call_timeout)
        return convert.heartbeat_from_proto(r)

    def ledger_since(self, session: str, head: str, max_entries: int = 0) -> LedgerHeaders:
        """Ledger headers after ``head`` ("" : from entry 0); LedgerError if the server's
        ledger holds no entry ``head``."""
        request = convert.build_message(pb.LedgerSinceRequest, "ledger request", session=session, head=head,
                                        max_entries=max_entries)
        with self._calling():
            r = self.stub.LedgerSince(request, timeout=self.call_timeout)
        return convert.ledger_headers_from_proto(r)

    def inclusion_proof(self, session: str, rnd: int) -> ProofInfo:
        request = convert.build_message(pb.InclusionProofRequest, "proof request", session=session, round=rnd)
        with self._calling():
            r = self.stub.InclusionProof(request, timeout=self.call_timeout)
        return convert.proof_from_proto(r)

    def leave(self, session: str, reason: str) -> None:
        request = convert.build_message(pb.LeaveRequest, "leave request", session=session, reason=reason)
        with self._calling():
            self.stub.Leave(request, timeout=5.0)
