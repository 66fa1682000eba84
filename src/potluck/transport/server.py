"""The gRPC server and the bulk lane beside it: options, binding, starting, stopping.

The calls themselves are ``servicer.py``'s; the bounds on what one identity can hold
of the server (slots, deadlines, the rate floor) are ``guard.py``'s; a certificate the
project CA revoked is refused at every call on both lanes (``revocation.py``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass

import grpc

from potluck.core.errors import TransportError
from potluck.core.sections import TransportSection
from potluck.transport.addresses import split_address
from potluck.transport.bulk import BulkOptions, BulkServer
from potluck.transport.certs import PemBundle
from potluck.transport.fleet_messages import FleetHandler, LedgerHandler
from potluck.transport.guard import CallGuard
from potluck.transport.revocation import Revocations
from potluck.transport.servicer import FleetServicer, Limits, handlers

log = logging.getLogger(__name__)


_SETTINGS = TransportSection()  # chunk and message sizes are declared once, as settings (core/sections.py)


@dataclass(frozen=True)
class ServerOptions:
    """``max_message_bytes`` caps one gRPC message (chunks must fit under it);
    ``max_workers`` bounds concurrent calls, and each waiting node holds one;
    ``calls_per_node`` bounds those of one identity, and ``io_timeout`` (seconds) each
    call's wait for its request and, with the rate floor, its payload."""

    chunk_bytes: int = int(_SETTINGS.chunk_mb * 2**20)
    max_message_bytes: int = int(_SETTINGS.max_message_mb * 2**20)
    max_workers: int = 256
    max_pull_wait: float = 30.0
    calls_per_node: int = 8  # calls of one identity in progress at once (a node needs about 3)
    io_timeout: float = 30.0  # a request must arrive within this; a payload within this + size / MIN_RATE
    handshake_timeout: float = 10.0  # a connection that has not finished TLS by then is closed
    max_ledger_entries: int = 256  # ledger headers per LedgerSince reply


class FleetServer:
    """The gRPC server and, when it runs, the bulk lane beside it: stopped together."""

    def __init__(self, server: grpc.Server, bulk: BulkServer | None, guard: CallGuard,
                 revocations: Revocations | None = None) -> None:
        self.grpc, self.bulk, self.guard, self.revocations = server, bulk, guard, revocations

    @property
    def bulk_port(self) -> int:
        return self.bulk.port if self.bulk is not None else 0

    def stop(self, grace: float | None) -> threading.Event:
        stopped: threading.Event = self.grpc.stop(grace)
        if self.bulk is not None:
            self.bulk.stop()
        self.guard.stop()
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
    ConfigError for an address that is not HOST:PORT, TransportError for one that
    cannot be listened at."""
    options = options or ServerOptions()
    split_address(address, "bind address")
    server = _grpc_server(options)
    guard = CallGuard(per_identity=options.calls_per_node, io_timeout=options.io_timeout,
                      on_expired=lambda _: handler.count_refusal("deadline"))
    limits = Limits(options.chunk_bytes, options.max_pull_wait, options.max_ledger_entries)
    revocations = Revocations(tls.crl, tls.ca) if tls is not None and tls.crl is not None else None
    servicer = FleetServicer(handler, limits, guard, secure=tls is not None, ledger=ledger, revocations=revocations)
    server.add_generic_rpc_handlers((handlers(servicer),))
    try:
        port = _bind(server, address, tls)
    except TransportError:
        guard.stop()
        raise
    where = bulk_address_for(address, port, bulk)
    lane = None
    if tls is not None and where is not None:
        try:
            lane = _start_lane(servicer, where, tls, options, required=bulk != "auto")
        except TransportError:
            server.stop(0)
            guard.stop()
            raise
    server.start()
    return FleetServer(server, lane, guard, revocations), port
