"""The node's side of the wire: one channel to the server, seven calls.

Every failed call raises a potluck error (via :func:`~potluck.transport.status.error_from_rpc`):
the server's own refusal with its specific kind, or :class:`TransportError` when the
server cannot be reached, which the node loop answers with backoff and a rejoin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from potluck.core.digests import payload_digest
from potluck.core.errors import TransportError
from potluck.transport import convert, frames
from potluck.transport.bulk import MIN_BULK_BYTES, BulkClient
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    PayloadError,
    Reassembly,
    split,
)
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import (
    PROTOCOL,
    HeartbeatInfo,
    IncomingResult,
    InstructionKind,
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
_KIND = {pb.FIT: "fit", pb.EVALUATE: "evaluate", pb.EXCHANGE: "exchange"}
LANE_RETRY_SECONDS = 60.0  # after the bulk lane failed, payloads go over gRPC this long


def _kind_of(kind: int) -> InstructionKind:
    if kind not in _KIND:
        raise WireError(f"instruction kind {kind} is unknown to this node; upgrade potluck")
    return _KIND[kind]  # type: ignore[return-value]


class FleetClient:
    """``tls=None`` connects in plaintext (only for servers started with --insecure).

    Large payloads go over the server's bulk lane (``bulk.py``) when it announces one at
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

    def close(self) -> None:
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
            host = self.address.rpartition(":")[0]
            # No progress for 30 s on the lane is a dead link (gRPC's keepalive finds one in 15 s).
            self.lane = BulkClient(host, port, self.tls, timeout=min(self.call_timeout, 30.0))

    def _lane(self) -> BulkClient | None:
        """The bulk lane, unless there is none or it failed within LANE_RETRY_SECONDS."""
        return self.lane if self.lane is not None and time.monotonic() >= self._lane_down_until else None

    def _lane_failed(self, exc: TransportError) -> None:
        assert self.lane is not None
        log.warning("bulk lane %s:%d failed (%s); payloads go over gRPC for %.0f s", self.lane.host, self.lane.port,
                    exc, LANE_RETRY_SECONDS)
        self._lane_down_until = time.monotonic() + LANE_RETRY_SECONDS

    def join(self, info: JoinInfo) -> Welcome:
        request = pb.JoinRequest(
            node_id=info.node_id, task_name=info.task_name, task_version=info.task_version,
            schema_digest=info.schema_digest, num_examples=info.num_examples, protocol=PROTOCOL,
            resources=pb.Resources(cpus=info.cpus, memory_bytes=info.memory_bytes, gpus=info.gpus),
            signing_key=info.public_key,
        )
        try:
            r = self.stub.Join(request, timeout=self.call_timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        self._open_lane(r.bulk_port)
        return Welcome(r.run_id, r.model_id, r.schema_digest, r.current_round, r.session, r.heartbeat_seconds,
                       r.data_info_json)

    def pull(self, session: str, wait: float) -> OutgoingInstruction | None:
        """The next instruction, or ``None`` if none came within ``wait`` seconds."""
        try:
            deadline = wait + min(self.call_timeout, 10.0)  # a long-poll that overruns this is a dead link
            lane = self._lane()
            request = pb.PullRequest(session=session, wait_seconds=wait, bulk=lane is not None)
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
            if h.params_via_bulk:
                if lane is None:
                    raise PayloadError("truncated", "the server sent a payload over a bulk lane this node did not ask for")
                if next(parts, None) is not None:
                    raise PayloadError("overrun", "chunks after a header that sends its payload over the bulk lane")
                try:
                    payload = lane.get(session, h.instruction_id, h.params_size, h.params_blake3)
                except TransportError as exc:
                    self._lane_failed(exc)
                    raise  # the node rejoins; the server hands the instruction out again, then over gRPC
            else:
                assembly = Reassembly(h.params_size, h.params_blake3, self.max_payload_bytes)
                for part in parts:
                    chunk = frames.chunk_of(part)
                    if chunk is None:
                        raise PayloadError("overrun", "a second header inside one instruction")
                    assembly.add(chunk.data, chunk.offset)
                payload = assembly.finish()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return OutgoingInstruction(
            h.instruction_id, h.run_id, h.round, _kind_of(h.kind),
            convert.config_from_proto(h.config), h.seed, payload, h.params_blake3, h.ledger_head, h.ledger_round,
        )

    def push(self, result: IncomingResult) -> bool:
        """Send a result; returns True if the server had it already (a repeat)."""
        header = pb.ResultHeader(
            session=result.session, instruction_id=result.instruction_id, round=result.round,
            num_examples=result.num_examples, loss=result.loss, metrics=convert.metrics_to_proto(result.metrics),
            run_id=result.run_id,
            params_size=len(result.payload), params_blake3=result.payload_digest or payload_digest(result.payload),
            signature=result.signature,
        )
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

        try:
            reply = self._push(parts(), timeout=self.call_timeout + len(result.payload) / 1e6)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return bool(reply.duplicate)

    def heartbeat(self, session: str, ledger_head: str = "") -> HeartbeatInfo:
        """``ledger_head``: the last ledger head this node verified, if it checks the ledger."""
        try:
            r = self.stub.Heartbeat(pb.HeartbeatRequest(session=session, ledger_head=ledger_head),
                                    timeout=self.call_timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return HeartbeatInfo(r.current_round, r.run_finished, r.ledger_head, r.ledger_round)

    def ledger_since(self, session: str, head: str, max_entries: int = 0) -> LedgerHeaders:
        """Ledger headers after ``head`` ("" : from entry 0); LedgerError if the server's
        ledger holds no entry ``head``."""
        try:
            r = self.stub.LedgerSince(pb.LedgerSinceRequest(session=session, head=head, max_entries=max_entries),
                                      timeout=self.call_timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return LedgerHeaders(tuple(r.headers), r.more)

    def inclusion_proof(self, session: str, rnd: int) -> ProofInfo:
        try:
            r = self.stub.InclusionProof(pb.InclusionProofRequest(session=session, round=rnd), timeout=self.call_timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return ProofInfo(r.included, r.contribution, r.index, r.tree_size, tuple(r.path))

    def leave(self, session: str, reason: str) -> None:
        try:
            self.stub.Leave(pb.LeaveRequest(session=session, reason=reason), timeout=5.0)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
