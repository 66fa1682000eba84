"""The gRPC side of the server: identities, chunk streams, status codes.

:class:`FleetServicer` knows gRPC and protobuf and nothing of rounds; it hands plain
dataclasses to a :class:`~potluck.transport.fleet_messages.FleetHandler`, and ledger
queries to a :class:`~potluck.transport.fleet_messages.LedgerHandler` when the server
keeps a ledger. Under mutual TLS a node's identity is its certificate's common name,
never what it claims.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from potluck.core.errors import AccessDenied, LedgerError, PotluckError
from potluck.core.sections import TransportSection
from potluck.transport import convert, frames
from potluck.transport.bulk import MIN_BULK_BYTES, BulkOptions, BulkServer
from potluck.transport.certs import CertificateError, PemBundle, certificate_sha256
from potluck.transport.chunks import PayloadError, Reassembly, split
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import PROTOCOL, FleetHandler, IncomingResult, JoinInfo, LedgerHandler
from potluck.transport.status import details_of, status_of
from potluck.transport.v1 import fleet_pb2 as pb
from potluck.transport.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_KIND = {"fit": pb.FIT, "evaluate": pb.EVALUATE, "exchange": pb.EXCHANGE}


_SETTINGS = TransportSection()  # chunk and message sizes are declared once, as settings (core/sections.py)


@dataclass(frozen=True)
class ServerOptions:
    """``max_message_bytes`` caps one gRPC message (chunks must fit under it);
    ``max_workers`` bounds concurrent calls, and each waiting node holds one."""

    chunk_bytes: int = int(_SETTINGS.chunk_mb * 2**20)
    max_message_bytes: int = int(_SETTINGS.max_message_mb * 2**20)
    max_workers: int = 256
    max_pull_wait: float = 30.0
    handshake_timeout: float = 10.0  # a connection that has not finished TLS by then is closed
    max_ledger_entries: int = 256  # ledger headers per LedgerSince reply


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request that did not parse, so the servicer can refuse it with a
    specific error and count it (gRPC would answer a parser exception with INTERNAL)."""

    what: str
    reason: str


def _tolerant(parse: Callable[[bytes], Any], what: str) -> Callable[[bytes], Any]:
    def parse_or_mark(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return Malformed(what, str(exc) or "not valid protobuf")

    return parse_or_mark


def _peer(context: grpc.ServicerContext) -> str | None:
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def _peer_certificate(context: grpc.ServicerContext) -> str:
    """SHA-256 of the client certificate ("" without TLS)."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return ""
    try:
        return certificate_sha256(pems[0])
    except CertificateError:
        return ""


class FleetServicer(pb_grpc.FleetServicer):
    """The gRPC calls, and what the bulk lane asks of the server (``bulk.BulkHandler``)."""

    def __init__(self, handler: FleetHandler, options: ServerOptions, *, secure: bool,
                 ledger: LedgerHandler | None = None) -> None:
        self.handler, self.options, self.secure, self.ledger = handler, options, secure, ledger
        self.bulk_port = 0  # announced at join once the lane listens

    @property
    def max_payload_bytes(self) -> int:
        return self.handler.max_payload_bytes

    def refused(self, reason: str) -> None:
        self.handler.refused(reason)

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview:
        return self.handler.pulled_payload(session, instruction_id, peer)

    def check_push(self, header: pb.ResultHeader, peer: str | None) -> None:
        self.handler.check_result(header.session, header.instruction_id, header.round, header.run_id, peer)

    def push(self, header: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        """A result that came over the bulk lane: handled as a gRPC Push."""
        return self._submit(header, payload, peer)

    def _identity(self, context: grpc.ServicerContext) -> str | None:
        peer = _peer(context)
        if self.secure and peer is None:
            raise AccessDenied("no client certificate: nodes must present one issued by the project CA")
        return peer

    def _abort(self, context: grpc.ServicerContext, error: PotluckError) -> None:
        log.info("refused %s: %s", context.peer(), error)
        context.abort(status_of(error), details_of(error))

    def _check_parsed(self, message: object) -> None:
        if isinstance(message, Malformed):
            self.handler.refused("malformed")
            raise WireError(f"malformed {message.what}: {message.reason}")

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        try:
            self._check_parsed(request)
            peer = self._identity(context)
            if request.protocol and request.protocol != PROTOCOL:
                self.handler.refused("protocol")
                raise AccessDenied(f"protocol {request.protocol!r} is not supported; this server speaks {PROTOCOL}")
            if peer is not None and request.node_id != peer:
                self.handler.refused("identity")
                raise AccessDenied(f"node id {request.node_id!r} does not match its certificate ({peer!r})")
            info = JoinInfo(
                node_id=request.node_id, task_name=request.task_name, schema_digest=request.schema_digest,
                num_examples=request.num_examples, task_version=request.task_version,
                cpus=request.resources.cpus, memory_bytes=request.resources.memory_bytes, gpus=request.resources.gpus,
                public_key=request.signing_key, certificate_sha256=_peer_certificate(context) if peer else "",
            )
            w = self.handler.join(info, peer)
        except PotluckError as exc:
            self._abort(context, exc)
            raise AssertionError("unreachable") from exc  # context.abort raises
        return pb.JoinReply(
            run_id=w.run_id, model_id=w.model_id, schema_digest=w.schema_digest, current_round=w.current_round,
            session=w.session, heartbeat_seconds=w.heartbeat_seconds, data_info_json=w.data_info_json,
            bulk_port=self.bulk_port,
        )

    def Pull(  # noqa: N802
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.InstructionPart | frames.ChunkFrame]:
        try:
            self._check_parsed(request)
            wait = min(max(request.wait_seconds, 0.0), self.options.max_pull_wait)
            ins = self.handler.next_instruction(request.session, wait, self._identity(context))
            if ins is None:
                return
            try:
                header = pb.InstructionHeader(
                    instruction_id=ins.instruction_id, run_id=ins.run_id, round=ins.round, kind=_KIND[ins.kind],
                    config=convert.config_to_proto(ins.config), seed=ins.seed,
                    params_size=len(ins.payload), params_blake3=ins.payload_digest,
                    ledger_head=ins.ledger_head, ledger_round=ins.ledger_round,
                )
            except ValueError as exc:  # a round or seed beyond the wire's integer range
                raise WireError(f"instruction {ins.instruction_id} cannot be sent: {exc}") from exc
        except PotluckError as exc:
            self._abort(context, exc)
            return
        if request.bulk and self.bulk_port and len(ins.payload) >= MIN_BULK_BYTES:
            header.params_via_bulk = True  # the node fetches it from the lane
            yield pb.InstructionPart(header=header)
            return
        yield pb.InstructionPart(header=header)
        for offset, piece in split(ins.payload, self.options.chunk_bytes):
            yield frames.ChunkFrame(offset, piece)

    def Push(  # noqa: N802
        self, request_iterator: Iterator[pb.ResultPart | frames.ChunkFrame], context: grpc.ServicerContext
    ) -> pb.PushReply:
        try:
            peer = self._identity(context)
            h, payload = self._receive(request_iterator)
            duplicate = self._submit(h, payload, peer)
        except PotluckError as exc:
            self._abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.PushReply(accepted=True, duplicate=duplicate)

    def _submit(self, h: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        try:
            metrics = convert.metrics_from_proto(h.metrics)
        except WireError:
            self.handler.refused("malformed")
            raise
        result = IncomingResult(
            session=h.session, instruction_id=h.instruction_id, round=h.round, num_examples=h.num_examples,
            loss=h.loss, metrics=metrics, payload=payload, run_id=h.run_id, signature=h.signature,
            payload_digest=h.params_blake3 if payload else "",  # checked on arrival
        )
        return self.handler.submit(result, peer)

    def _receive(self, parts: Iterator[pb.ResultPart | frames.ChunkFrame | Malformed]) -> tuple[pb.ResultHeader, bytes]:
        """The header and the checked payload of a push (payload errors counted by reason)."""
        try:
            first = next(parts, None)
            self._check_parsed(first)
            if first is None or frames.chunk_of(first) is not None:
                raise PayloadError("truncated", "a push must start with a result header")
            header: pb.ResultHeader = first.header  # type: ignore[union-attr]
            if not header.params_size:
                return header, b""
            assembly = Reassembly(header.params_size, header.params_blake3, self.handler.max_payload_bytes)
            for part in parts:
                self._check_parsed(part)
                chunk = frames.chunk_of(part)
                if chunk is None:
                    raise PayloadError("overrun", "a second header inside one push")
                assembly.add(chunk.data, chunk.offset)
            return header, assembly.finish()
        except PayloadError as exc:
            self.handler.refused(f"payload_{exc.reason}")
            raise

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:  # noqa: N802
        try:
            self._check_parsed(request)
            peer = self._identity(context)
            if self.ledger is not None and request.ledger_head:
                self.ledger.ledger_seen(request.session, request.ledger_head, peer)  # before: it may end the run
            info = self.handler.heartbeat(request.session, peer)
            head = self.ledger.ledger_head() if self.ledger is not None else None
        except PotluckError as exc:
            self._abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.HeartbeatReply(current_round=info.current_round, run_finished=info.run_finished,
                                 ledger_head=head[1] if head else "", ledger_round=head[0] if head else 0)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:  # noqa: N802
        try:
            self._check_parsed(request)
            self.handler.leave(request.session, request.reason, self._identity(context))
        except PotluckError as exc:
            self._abort(context, exc)
        return pb.LeaveReply()


    def _ledger_handler(self) -> LedgerHandler:
        if self.ledger is None:
            raise LedgerError("this server keeps no ledger")
        return self.ledger

    def LedgerSince(self, request: pb.LedgerSinceRequest, context: grpc.ServicerContext) -> pb.LedgerSinceReply:  # noqa: N802
        try:
            self._check_parsed(request)
            peer = self._identity(context)
            limit = min(request.max_entries or self.options.max_ledger_entries, self.options.max_ledger_entries)
            found = self._ledger_handler().ledger_since(request.session, request.head, limit, peer)
        except PotluckError as exc:
            self._abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.LedgerSinceReply(headers=list(found.headers), more=found.more)

    def InclusionProof(self, request: pb.InclusionProofRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> pb.InclusionProofReply:
        try:
            self._check_parsed(request)
            proof = self._ledger_handler().ledger_proof(request.session, request.round, self._identity(context))
        except PotluckError as exc:
            self._abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.InclusionProofReply(included=proof.included, contribution=proof.contribution, index=proof.index,
                                      tree_size=proof.tree_size, path=list(proof.path))


def _handlers(servicer: FleetServicer) -> grpc.GenericRpcHandler:
    """The generated registration, except that the payload-carrying directions (Pull's
    replies, Push's requests) use hand framing (see frames.py)."""
    return grpc.method_handlers_generic_handler("potluck.v1.Fleet", {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join, _tolerant(pb.JoinRequest.FromString, "join request"), pb.JoinReply.SerializeToString),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull, _tolerant(pb.PullRequest.FromString, "pull request"), frames.serialize),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.Push, _tolerant(frames.parser(pb.ResultPart), "result part"), pb.PushReply.SerializeToString),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            servicer.Heartbeat, _tolerant(pb.HeartbeatRequest.FromString, "heartbeat"),
            pb.HeartbeatReply.SerializeToString),
        "Leave": grpc.unary_unary_rpc_method_handler(
            servicer.Leave, _tolerant(pb.LeaveRequest.FromString, "leave request"), pb.LeaveReply.SerializeToString),
        "LedgerSince": grpc.unary_unary_rpc_method_handler(
            servicer.LedgerSince, _tolerant(pb.LedgerSinceRequest.FromString, "ledger request"),
            pb.LedgerSinceReply.SerializeToString),
        "InclusionProof": grpc.unary_unary_rpc_method_handler(
            servicer.InclusionProof, _tolerant(pb.InclusionProofRequest.FromString, "proof request"),
            pb.InclusionProofReply.SerializeToString),
    })


class FleetServer:
    """The gRPC server and, when it runs, the bulk lane beside it: stopped together."""

    def __init__(self, server: grpc.Server, bulk: BulkServer | None) -> None:
        self.grpc, self.bulk = server, bulk

    @property
    def bulk_port(self) -> int:
        return self.bulk.port if self.bulk is not None else 0

    def stop(self, grace: float | None) -> threading.Event:
        stopped: threading.Event = self.grpc.stop(grace)
        if self.bulk is not None:
            self.bulk.stop()
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.grpc.wait_for_termination(timeout))


def bulk_address_for(bind: str, port: int, setting: str) -> str | None:
    """Where the bulk lane listens: ``setting`` "off" → nowhere; "auto" → the gRPC host,
    port + 1 (any free port when the gRPC port was chosen by the system); else HOST:PORT."""
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    host, _, asked = bind.rpartition(":")
    return f"{host}:{0 if asked in ('', '0') else port + 1}"


def start_server(
    handler: FleetHandler, address: str, tls: PemBundle | None, options: ServerOptions | None = None,
    *, ledger: LedgerHandler | None = None, bulk: str = "auto",
) -> tuple[FleetServer, int]:
    """Serve ``handler`` on ``address`` (``host:port``; port 0 picks one). Returns the
    started server and the bound port. ``tls=None`` serves plaintext (--insecure).
    ``ledger`` answers the ledger calls (``None``: they are refused with LedgerError).
    ``bulk`` places the bulk lane (:func:`bulk_address_for`; never without TLS)."""
    options = options or ServerOptions()
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="potluck-rpc"),
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            # Accept the nodes' keepalive pings (every 10 s, also between calls).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # A connection that opens and never finishes TLS (or sends nothing) is closed.
            ("grpc.server_handshake_timeout_ms", int(options.handshake_timeout * 1000)),
        ],
        maximum_concurrent_rpcs=options.max_workers,
    )
    servicer = FleetServicer(handler, options, secure=tls is not None, ledger=ledger)
    server.add_generic_rpc_handlers((_handlers(servicer),))
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    lane = None
    where = bulk_address_for(address, port, bulk)
    if tls is not None and where is not None:
        try:
            lane = BulkServer(servicer, where, tls, BulkOptions(handshake_timeout=options.handshake_timeout)).start()
        except OSError as exc:
            if bulk != "auto":
                server.stop(0)
                raise OSError(f"cannot bind the bulk lane at {where}: {exc}") from exc
            log.warning("no bulk lane (%s: %s): payloads travel as gRPC chunks", where, exc)
        else:
            servicer.bulk_port = lane.port
            log.info("bulk lane for payloads on port %d", lane.port)
    server.start()
    return FleetServer(server, lane), port
