"""The gRPC side of the server: identities, chunk streams, status codes.

:class:`FleetServicer` knows gRPC and protobuf and nothing of rounds; it hands plain
dataclasses to a :class:`~potluck.transport.fleet_messages.FleetHandler`, and ledger
queries to a :class:`~potluck.transport.fleet_messages.LedgerHandler` when the server
keeps a ledger. Under mutual TLS a node's identity is its certificate's common name,
never what it claims, and a certificate the project CA revoked is refused at every
call (``revocation.py``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from potluck.core.errors import AccessDenied, LedgerError, PotluckError, TransportError
from potluck.core.sections import TransportSection
from potluck.transport import convert, frames
from potluck.transport.addresses import split_address
from potluck.transport.bulk import MIN_BULK_BYTES, BulkOptions, BulkServer
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import PayloadError, Reassembly, split
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import PROTOCOL, FleetHandler, IncomingResult, LedgerHandler
from potluck.transport.revocation import Revocations, stamp_of
from potluck.transport.status import details_of, status_of
from potluck.transport.v1 import fleet_pb2 as pb
from potluck.transport.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


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


def _peer_pem(context: grpc.ServicerContext) -> bytes | None:
    """The client certificate (PEM), None without TLS."""
    pems = context.auth_context().get("x509_pem_cert")
    return pems[0] if pems else None


def _refusing(method: Callable[..., Any]) -> Callable[..., Any]:
    """A servicer call whose PotluckError aborts it with its status code and details
    (status.py), and whose request that did not parse is refused as a WireError."""

    def refuse(context: grpc.ServicerContext, exc: PotluckError) -> NoReturn:
        log.info("refused %s: %s", context.peer(), exc)
        context.abort(status_of(exc), details_of(exc))
        raise AssertionError("unreachable: context.abort raises") from exc

    if inspect.isgeneratorfunction(method):  # a reply stream: errors arise while it is read
        @functools.wraps(method)
        def stream(self: FleetServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                self.check_parsed(request)
                yield from method(self, request, context)
            except PotluckError as exc:
                refuse(context, exc)

        return stream

    @functools.wraps(method)
    def call(self: FleetServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.check_parsed(request)
            return method(self, request, context)
        except PotluckError as exc:
            refuse(context, exc)

    return call


class FleetServicer(pb_grpc.FleetServicer):
    """The gRPC calls, and what the bulk lane asks of the server (``bulk.BulkHandler``)."""

    def __init__(self, handler: FleetHandler, options: ServerOptions, *, secure: bool,
                 ledger: LedgerHandler | None = None, revocations: Revocations | None = None) -> None:
        self.handler, self.options, self.secure, self.ledger = handler, options, secure, ledger
        self.revocations = revocations
        self.bulk_port = 0  # announced at join once the lane listens

    @property
    def max_payload_bytes(self) -> int:
        return self.handler.max_payload_bytes

    def count_refusal(self, reason: str) -> None:
        self.handler.count_refusal(reason)

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview:
        return self.handler.pulled_payload(session, instruction_id, peer)

    def check_push(self, header: pb.ResultHeader, peer: str | None) -> None:
        r = self._result(header, b"")  # a header the wire refuses is refused before its payload moves
        self.handler.check_result(r.session, r.instruction_id, r.round, r.run_id, peer)

    def push(self, header: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        """A result that came over the bulk lane: handled as a gRPC Push."""
        return self._submit(header, payload, peer)

    def _identity(self, context: grpc.ServicerContext) -> str | None:
        peer = _peer(context)
        if self.secure and peer is None:
            raise AccessDenied("no client certificate: nodes must present one issued by the project CA")
        if self.revocations is not None:
            self.revocations.check_pem(_peer_pem(context), self.handler.count_refusal)
        return peer

    def check_parsed(self, message: object) -> None:
        if isinstance(message, Malformed):
            self.handler.count_refusal("malformed")
            raise WireError(f"malformed {message.what}: {message.reason}")

    @_refusing
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        peer = self._identity(context)
        if request.protocol and request.protocol != PROTOCOL:
            self.handler.count_refusal("protocol")
            raise AccessDenied(f"protocol {request.protocol!r} is not supported; this server speaks {PROTOCOL}")
        if peer is not None and request.node_id != peer:
            self.handler.count_refusal("identity")
            raise AccessDenied(f"node id {request.node_id!r} does not match its certificate ({peer!r})")
        pem = _peer_pem(context) if peer else None
        info = convert.join_from_proto(request, stamp_of(pem) if pem else None)
        return convert.welcome_to_proto(self.handler.join(info, peer), self.bulk_port)

    @_refusing
    def Pull(  # noqa: N802
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.InstructionPart | frames.ChunkFrame]:
        wait = min(max(request.wait_seconds, 0.0), self.options.max_pull_wait)
        ins = self.handler.next_instruction(request.session, wait, self._identity(context))
        if ins is None:
            return
        header = convert.instruction_to_proto(ins)
        if request.bulk and self.bulk_port and len(ins.payload) >= MIN_BULK_BYTES:
            header.params_via_bulk = True  # the node fetches it from the lane
            yield pb.InstructionPart(header=header)
            return
        yield pb.InstructionPart(header=header)
        for offset, piece in split(ins.payload, self.options.chunk_bytes):
            yield frames.ChunkFrame(offset, piece)

    @_refusing
    def Push(  # noqa: N802
        self, request_iterator: Iterator[pb.ResultPart | frames.ChunkFrame], context: grpc.ServicerContext
    ) -> pb.PushReply:
        peer = self._identity(context)
        h, payload = self._receive(request_iterator)
        return pb.PushReply(accepted=True, duplicate=self._submit(h, payload, peer))

    def _submit(self, h: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        return self.handler.submit(self._result(h, payload), peer)

    def _result(self, h: pb.ResultHeader, payload: bytes | memoryview) -> IncomingResult:
        try:
            return convert.result_from_proto(h, payload)
        except WireError:
            self.handler.count_refusal("malformed")
            raise

    def _receive(self, parts: Iterator[pb.ResultPart | frames.ChunkFrame | Malformed]) -> tuple[pb.ResultHeader, bytes]:
        """The header and the checked payload of a push (payload errors counted by reason)."""
        try:
            first = next(parts, None)
            self.check_parsed(first)
            if first is None or frames.chunk_of(first) is not None:
                raise PayloadError("truncated", "a push must start with a result header")
            header: pb.ResultHeader = first.header  # type: ignore[union-attr]
            if not header.params_size:
                return header, b""
            assembly = Reassembly(header.params_size, header.params_blake3, self.handler.max_payload_bytes)
            for part in parts:
                self.check_parsed(part)
                chunk = frames.chunk_of(part)
                if chunk is None:
                    raise PayloadError("overrun", "a second header inside one push")
                assembly.add(chunk.data, chunk.offset)
            return header, assembly.finish()
        except PayloadError as exc:
            self.handler.count_refusal(f"payload_{exc.reason}")
            raise

    @_refusing
    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:  # noqa: N802
        peer = self._identity(context)
        if self.ledger is not None and request.ledger_head:
            self.ledger.ledger_seen(request.session, request.ledger_head, peer)  # before: it may end the run
        info = self.handler.heartbeat(request.session, peer)
        head = self.ledger.ledger_head() if self.ledger is not None else None
        info = dataclasses.replace(info, ledger_round=head[0] if head else 0, ledger_head=head[1] if head else "")
        return convert.heartbeat_to_proto(info)

    @_refusing
    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:  # noqa: N802
        self.handler.leave(request.session, request.reason, self._identity(context))
        return pb.LeaveReply()

    def _ledger_handler(self) -> LedgerHandler:
        if self.ledger is None:
            raise LedgerError("this server keeps no ledger")
        return self.ledger

    @_refusing
    def LedgerSince(self, request: pb.LedgerSinceRequest, context: grpc.ServicerContext) -> pb.LedgerSinceReply:  # noqa: N802
        peer = self._identity(context)
        limit = min(request.max_entries or self.options.max_ledger_entries, self.options.max_ledger_entries)
        return convert.ledger_headers_to_proto(self._ledger_handler().ledger_since(request.session, request.head,
                                                                                   limit, peer))

    @_refusing
    def InclusionProof(self, request: pb.InclusionProofRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> pb.InclusionProofReply:
        proof = self._ledger_handler().ledger_proof(request.session, request.round, self._identity(context))
        return convert.proof_to_proto(proof)


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

    def __init__(self, server: grpc.Server, bulk: BulkServer | None, revocations: Revocations | None = None) -> None:
        self.grpc, self.bulk, self.revocations = server, bulk, revocations

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
    port + 1 (any free port when the gRPC port was chosen by the system); else HOST:PORT
    (ConfigError if it is not one)."""
    if setting == "off":
        return None
    if setting != "auto":
        split_address(setting, "bulk lane address")
        return setting
    host, asked = split_address(bind, "bind address")
    return f"{host}:{0 if asked == 0 else port + 1}"


def _grpc_server(options: ServerOptions) -> grpc.Server:
    return grpc.server(
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


def _bind(server: grpc.Server, address: str, tls: PemBundle | None) -> int:
    """The port ``server`` listens on at ``address``; TransportError when it cannot."""
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca,
                                                      require_client_auth=True)
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # newer grpc raises where older ones returned 0
        raise TransportError(f"cannot listen at {address}: {exc} (in use, or not an address of this machine?)") from exc
    if port == 0:
        raise TransportError(f"cannot listen at {address} (in use, or not an address of this machine?)")
    return int(port)


def _start_lane(servicer: FleetServicer, where: str, tls: PemBundle, options: ServerOptions,
                required: bool) -> BulkServer | None:
    """The bulk lane at ``where``; without one (a warning) if it cannot listen and is not ``required``."""
    try:
        lane = BulkServer(servicer, where, tls, BulkOptions(handshake_timeout=options.handshake_timeout),
                          revocations=servicer.revocations).start()
    except TransportError as exc:
        if required:
            raise
        log.warning("no bulk lane (%s): payloads travel as gRPC chunks", exc)
        return None
    servicer.bulk_port = lane.port
    log.info("bulk lane for payloads on port %d", lane.port)
    return lane


def start_server(
    handler: FleetHandler, address: str, tls: PemBundle | None, options: ServerOptions | None = None,
    *, ledger: LedgerHandler | None = None, bulk: str = "auto",
) -> tuple[FleetServer, int]:
    """Serve ``handler`` on ``address`` (``host:port``; port 0 picks one). Returns the
    started server and the bound port. ``tls=None`` serves plaintext (--insecure).
    ``ledger`` answers the ledger calls (``None``: they are refused with LedgerError).
    ``bulk`` places the bulk lane (:func:`bulk_address_for`; never without TLS).
    ``tls.crl`` (``tls_dir/crl.pem``), when set, lists revoked certificates: checked at
    every call on both lanes (CertificateError at start if it does not verify).
    ConfigError for an address that is not HOST:PORT, TransportError for one that
    cannot be listened at."""
    options = options or ServerOptions()
    split_address(address, "bind address")
    revocations = Revocations(tls.crl, tls.ca) if tls is not None and tls.crl is not None else None
    server = _grpc_server(options)
    servicer = FleetServicer(handler, options, secure=tls is not None, ledger=ledger, revocations=revocations)
    server.add_generic_rpc_handlers((_handlers(servicer),))
    port = _bind(server, address, tls)
    where = bulk_address_for(address, port, bulk)
    lane = None
    if tls is not None and where is not None:
        try:
            lane = _start_lane(servicer, where, tls, options, required=bulk != "auto")
        except TransportError:
            server.stop(0)
            raise
    server.start()
    return FleetServer(server, lane, revocations), port
