"""The gRPC calls: identities, bounds, chunk streams, status codes.

:class:`FleetServicer` knows gRPC and protobuf and nothing of rounds; it hands plain
dataclasses to a :class:`~potluck.transport.fleet_messages.FleetHandler`, and ledger
queries to a :class:`~potluck.transport.fleet_messages.LedgerHandler` when the server
keeps a ledger. Under mutual TLS a node's identity is its certificate's common name,
never what it claims.

Every call, in this order and before it holds anything: a certificate without a name
is refused; an identity the handler does not allow (the allow-list) is refused; the
identity gets one of its few slots (``guard.py``), or RESOURCE_EXHAUSTED; the request
is read under a deadline. A push is checked from its header (session, identity,
instruction, round, and announced size against what its instruction expects) before
a byte of its payload is read.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from potluck.core.errors import AccessDenied, ConfigError, LedgerError, PotluckError
from potluck.transport import convert, frames
from potluck.transport.bulk import MIN_BULK_BYTES
from potluck.transport.certs import NODE_ID_RULE, check_node_id
from potluck.transport.chunks import PayloadError, Reassembly, split
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import PROTOCOL, FleetHandler, IncomingResult, LedgerHandler
from potluck.transport.guard import Busy, CallGuard, GuardedCall, address_of, first_message
from potluck.transport.revocation import Revocations, stamp_of
from potluck.transport.status import details_of, status_of
from potluck.transport.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What the servicer allows one call (``ServerOptions`` carries them)."""

    chunk_bytes: int
    max_pull_wait: float
    max_ledger_entries: int


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


def valid_node_id(node_id: str) -> bool:
    try:
        check_node_id(node_id)
    except ConfigError:
        return False
    return True


def _refuse(context: grpc.ServicerContext, code: grpc.StatusCode, details: str, exc: Exception) -> NoReturn:
    log.info("refused %s: %s", context.peer(), details)
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises") from exc


def _served(method: Callable[..., Any]) -> Callable[..., Any]:
    """A call read from a request stream under the guard (see the module docstring).
    ``method(self, request, context, call)`` gets the first request message; one named
    ``...Stream`` gets the request iterator itself. A PotluckError aborts the call with
    its status code and details (status.py); Busy with RESOURCE_EXHAUSTED."""
    whole_stream = method.__name__.endswith("Stream")

    def enter(self: FleetServicer, requests: Iterator[Any], call: GuardedCall) -> Any:
        if whole_stream:
            return requests
        request = first_message(requests, call)
        if request is None:
            self.handler.count_refusal("malformed")
            raise WireError("the call ended before its request arrived")
        self.check_parsed(request)
        return request

    if inspect.isgeneratorfunction(method):  # a reply stream: errors arise while it is read
        @functools.wraps(method)
        def stream(self: FleetServicer, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                with self.guarded(context) as call:
                    yield from method(self, enter(self, requests, call), context, call)
            except PotluckError as exc:
                _refuse(context, status_of(exc), details_of(exc), exc)
            except Busy as exc:
                self.busy(context, exc)

        return stream

    @functools.wraps(method)
    def call(self: FleetServicer, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            with self.guarded(context) as guarded:
                return method(self, enter(self, requests, guarded), context, guarded)
        except PotluckError as exc:
            _refuse(context, status_of(exc), details_of(exc), exc)
        except Busy as exc:
            self.busy(context, exc)

    return call


class FleetServicer:
    """The gRPC calls, and what the bulk lane asks of the server (``bulk.BulkHandler``)."""

    def __init__(self, handler: FleetHandler, limits: Limits, guard: CallGuard, *, secure: bool,
                 ledger: LedgerHandler | None = None, revocations: Revocations | None = None) -> None:
        self.handler, self.limits, self.guard = handler, limits, guard
        self.secure, self.ledger, self.revocations = secure, ledger, revocations
        self.bulk_port = 0  # announced at join once the lane listens

    def count_refusal(self, reason: str) -> None:
        self.handler.count_refusal(reason)

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview:
        return self.handler.pulled_payload(session, instruction_id, peer)

    def check_push(self, header: pb.ResultHeader, peer: str | None) -> int:
        """The largest payload a push with this header may carry; the error it would meet
        otherwise (PayloadError "oversize" for a larger announced size). Before its payload moves."""
        r = self._result(header, b"")  # a header the wire refuses is refused before its payload moves
        limit = self.handler.check_result(r.session, r.instruction_id, r.round, r.run_id, peer)
        if header.params_size > limit:
            self.handler.count_refusal("payload_oversize")
            raise PayloadError("oversize", f"payload of {header.params_size:,} bytes exceeds the limit of {limit:,} "
                                           f"bytes that a result for instruction {r.instruction_id} may carry")
        return limit

    def push(self, header: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        """A result that came over the bulk lane: handled as a gRPC Push."""
        return self._submit(header, payload, peer)

    def check_caller(self, peer: str | None) -> None:
        """AccessDenied for a certificate without a name, or an identity not allowed."""
        if self.secure and peer is None:
            self.handler.count_refusal("identity")
            raise AccessDenied("no client certificate: nodes must present one issued by the project CA")
        if peer is not None and not self.handler.allows(peer):
            self.handler.count_refusal("not_allowed")
            raise AccessDenied(f"node {peer!r} is not on this server's allow-list")

    def guarded(self, context: grpc.ServicerContext) -> Any:
        """The caller checked, then one of its slots (a context manager; Busy without one)."""
        peer = _peer(context)
        self.check_caller(peer)
        if self.revocations is not None:  # a certificate the project CA revoked: refused at every call
            self.revocations.check_pem(_peer_pem(context), self.handler.count_refusal)
        return self.guard.call(peer if peer is not None else address_of(context), context)

    def busy(self, context: grpc.ServicerContext, exc: Busy) -> NoReturn:
        self.handler.count_refusal("busy")
        _refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"TransportError: {exc}", exc)

    def check_parsed(self, message: object) -> None:
        if isinstance(message, Malformed):
            self.handler.count_refusal("malformed")
            raise WireError(f"malformed {message.what}: {message.reason}")

    @_served
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext, call: GuardedCall) -> pb.JoinReply:  # noqa: N802
        peer = _peer(context)
        if request.protocol and request.protocol != PROTOCOL:
            self.handler.count_refusal("protocol")
            raise AccessDenied(f"protocol {request.protocol!r} is not supported; this server speaks {PROTOCOL}")
        if peer is not None and request.node_id != peer:
            self.handler.count_refusal("identity")
            raise AccessDenied(f"node id {request.node_id!r} does not match its certificate ({peer!r})")
        if not valid_node_id(request.node_id):  # without TLS nothing else vouches for it
            self.handler.count_refusal("identity")
            raise AccessDenied(f"invalid node id {request.node_id[:80]!r}: use {NODE_ID_RULE}")
        pem = _peer_pem(context) if peer else None
        info = convert.join_from_proto(request, stamp_of(pem) if pem else None)
        return convert.welcome_to_proto(self.handler.join(info, peer), self.bulk_port)

    @_served
    def Pull(  # noqa: N802
        self, request: pb.PullRequest, context: grpc.ServicerContext, call: GuardedCall
    ) -> Iterator[pb.InstructionPart | frames.ChunkFrame]:
        if not math.isfinite(request.wait_seconds):
            self.handler.count_refusal("malformed")
            raise WireError(f"wait_seconds must be a finite number of seconds, got {request.wait_seconds}")
        wait = min(max(request.wait_seconds, 0.0), self.limits.max_pull_wait)
        call.allow(wait + self.guard.io_timeout)
        ins = self.handler.next_instruction(request.session, wait, _peer(context))
        if ins is None:
            return
        header = convert.instruction_to_proto(ins)
        if request.bulk and self.bulk_port and len(ins.payload) >= MIN_BULK_BYTES:
            header.params_via_bulk = True  # the node fetches it from the lane
            yield pb.InstructionPart(header=header)
            return
        call.allow(self.guard.io_timeout, len(ins.payload))  # a reader slower than the rate floor is cut off
        yield pb.InstructionPart(header=header)
        for offset, piece in split(ins.payload, self.limits.chunk_bytes):
            yield frames.ChunkFrame(offset, piece)

    @_served
    def PushStream(  # noqa: N802
        self, parts: Iterator[pb.ResultPart | frames.ChunkFrame | Malformed], context: grpc.ServicerContext,
        call: GuardedCall,
    ) -> pb.PushReply:
        peer = _peer(context)
        header = self._push_header(parts, call)
        limit = self.check_push(header, peer)  # nothing of the payload has been read yet
        call.allow(self.guard.io_timeout, header.params_size)
        payload = self._receive(header, parts, limit, call)
        call.settle()
        return pb.PushReply(accepted=True, duplicate=self._submit(header, payload, peer))

    def _push_header(self, parts: Iterator[Any], call: GuardedCall) -> pb.ResultHeader:
        first = first_message(parts, call)
        self.check_parsed(first)
        if first is None or frames.chunk_of(first) is not None:
            self.handler.count_refusal("payload_truncated")
            raise PayloadError("truncated", "a push must start with a result header")
        header: pb.ResultHeader = first.header
        return header

    def _submit(self, h: pb.ResultHeader, payload: bytes | memoryview, peer: str | None) -> bool:
        return self.handler.submit(self._result(h, payload), peer)

    def _result(self, h: pb.ResultHeader, payload: bytes | memoryview) -> IncomingResult:
        """The result ``h`` announces; WireError for one the wire cannot carry, or whose loss
        or metrics are infinite (NaN stays: it stands for a value not measured)."""
        try:
            result = convert.result_from_proto(h, payload)
            for name, value in [("loss", result.loss), *result.metrics.items()]:
                if math.isinf(value):
                    raise WireError(f"{name} must be a finite number or NaN, got {value}")
            return result
        except WireError:
            self.handler.count_refusal("malformed")
            raise

    def _receive(self, header: pb.ResultHeader, parts: Iterator[Any], limit: int, call: GuardedCall) -> bytes:
        """The checked payload of a push whose header passed (payload errors counted by reason)."""
        try:
            if not header.params_size:
                return b""
            assembly = Reassembly(header.params_size, header.params_blake3, limit)
            for part in parts:
                self.check_parsed(part)
                chunk = frames.chunk_of(part)
                if chunk is None:
                    raise PayloadError("overrun", "a second header inside one push")
                assembly.add(chunk.data, chunk.offset)
            call.check()  # a stream the watchdog cut short ends like a finished one
            return assembly.finish()
        except PayloadError as exc:
            self.handler.count_refusal(f"payload_{exc.reason}")
            raise

    @_served
    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext,  # noqa: N802
                  call: GuardedCall) -> pb.HeartbeatReply:
        peer = _peer(context)
        if self.ledger is not None and request.ledger_head:
            self.ledger.ledger_seen(request.session, request.ledger_head, peer)  # before: it may end the run
        info = self.handler.heartbeat(request.session, peer)
        head = self.ledger.ledger_head() if self.ledger is not None else None
        info = dataclasses.replace(info, ledger_round=head[0] if head else 0, ledger_head=head[1] if head else "")
        return convert.heartbeat_to_proto(info)

    @_served
    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext, call: GuardedCall) -> pb.LeaveReply:  # noqa: N802
        self.handler.leave(request.session, request.reason, _peer(context))
        return pb.LeaveReply()

    def _ledger_handler(self) -> LedgerHandler:
        if self.ledger is None:
            raise LedgerError("this server keeps no ledger")
        return self.ledger

    @_served
    def LedgerSince(self, request: pb.LedgerSinceRequest, context: grpc.ServicerContext,  # noqa: N802
                    call: GuardedCall) -> pb.LedgerSinceReply:
        limit = min(request.max_entries or self.limits.max_ledger_entries, self.limits.max_ledger_entries)
        headers = self._ledger_handler().ledger_since(request.session, request.head, limit, _peer(context))
        return convert.ledger_headers_to_proto(headers)

    @_served
    def InclusionProof(self, request: pb.InclusionProofRequest, context: grpc.ServicerContext,  # noqa: N802
                       call: GuardedCall) -> pb.InclusionProofReply:
        proof = self._ledger_handler().ledger_proof(request.session, request.round, _peer(context))
        return convert.proof_to_proto(proof)


def handlers(servicer: FleetServicer) -> grpc.GenericRpcHandler:
    """Every method with a request *stream*, so the servicer's code runs as soon as a
    call starts (gRPC would otherwise wait, holding a thread, for a unary request that
    may never come); the payload-carrying directions (Pull's replies, Push's requests)
    use hand framing (see frames.py). Clients see the usual unary and stream calls."""
    def unary(method: Any, parse: Callable[[bytes], Any], what: str, reply: Any) -> grpc.RpcMethodHandler:
        return grpc.stream_unary_rpc_method_handler(method, _tolerant(parse, what), reply.SerializeToString)

    return grpc.method_handlers_generic_handler("potluck.v1.Fleet", {
        "Join": unary(servicer.Join, pb.JoinRequest.FromString, "join request", pb.JoinReply),
        "Pull": grpc.stream_stream_rpc_method_handler(
            servicer.Pull, _tolerant(pb.PullRequest.FromString, "pull request"), frames.serialize),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.PushStream, _tolerant(frames.parser(pb.ResultPart), "result part"),
            pb.PushReply.SerializeToString),
        "Heartbeat": unary(servicer.Heartbeat, pb.HeartbeatRequest.FromString, "heartbeat", pb.HeartbeatReply),
        "Leave": unary(servicer.Leave, pb.LeaveRequest.FromString, "leave request", pb.LeaveReply),
        "LedgerSince": unary(servicer.LedgerSince, pb.LedgerSinceRequest.FromString, "ledger request",
                             pb.LedgerSinceReply),
        "InclusionProof": unary(servicer.InclusionProof, pb.InclusionProofRequest.FromString, "proof request",
                                pb.InclusionProofReply),
    })
