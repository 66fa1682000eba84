"""The bulk lane's listener: a thread per connection, each request checked before its payload moves."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from potluck.core.errors import PotluckError, TransportError
from potluck.transport.addresses import bare_host, split_address
from potluck.transport.bulk.wire import (
    CONTINUE,
    ERROR,
    GET,
    MAGIC,
    OK,
    PUT,
    REPLY,
    REQUEST,
    common_name,
    payload_deadline,
    recv_exact,
    recv_payload,
    server_context,
    shut,
)
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import PayloadError
from potluck.transport.convert import WireError
from potluck.transport.revocation import CertificateRevoked, Revocations
from potluck.transport.status import details_of
from potluck.transport.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)


class BulkHandler(Protocol):
    """What the lane needs of the server (``FleetServicer`` provides it)."""

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview: ...

    def check_push(self, header: pb.ResultHeader, peer: str | None) -> int:
        """Raise the error a push with this header would meet, before its payload moves
        (an announced size over what its instruction expects included); else that limit."""

    def push(self, header: pb.ResultHeader, payload: memoryview, peer: str | None) -> bool: ...

    def count_refusal(self, reason: str) -> None: ...


@dataclass(frozen=True)
class BulkOptions:
    handshake_timeout: float = 10.0  # a connection that has not finished TLS by then is closed
    io_timeout: float = 30.0  # a request's header must arrive within this; a payload within this + size / MIN_RATE
    idle_timeout: float = 600.0  # an open connection with no request this long is closed
    max_connections: int = 1024
    max_handshakes: int = 64  # connections still in their TLS handshake
    max_handshakes_per_address: int = 8  # of those, from one source address: one host cannot lock others out
    max_per_node: int = 4  # connections per certificate common name
    max_header_bytes: int = 2**20


class BulkServer:
    """The lane's listener: a thread per connection, within the limits of ``options``.
    Every request of a peer whose certificate is in ``revocations`` is refused."""

    def __init__(self, handler: BulkHandler, address: str, tls: PemBundle, options: BulkOptions | None = None,
                 *, revocations: Revocations | None = None) -> None:
        self.handler, self.options, self.revocations = handler, options or BulkOptions(), revocations
        self.context = server_context(tls)
        host, port = split_address(address, "bulk lane address")
        try:
            self._listener = socket.create_server((bare_host(host) or "0.0.0.0", port),
                                                  family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            raise TransportError(f"cannot listen for the bulk lane at {address}: {exc.strerror or exc}") from exc
        self.port: int = self._listener.getsockname()[1]
        self.transfers: Counter[str] = Counter()  # "get" / "put": payloads moved over the lane
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._handshaking: Counter[str] = Counter()  # by source address
        self._per_node: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="potluck-bulk", daemon=True)

    def start(self) -> BulkServer:
        self._thread.start()
        return self

    def stop(self, wait: float = 5.0) -> None:
        self._stopped = True
        shut(self._listener)
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                shut(conn)
            threads = list(self._threads)
        self._thread.join(wait)
        for t in threads:
            t.join(wait / max(len(threads), 1))

    def _count(self, what: str) -> None:
        with self._lock:
            self.transfers[what] += 1

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, source = self._listener.accept()
            except OSError as exc:
                if self._stopped:
                    return
                log.warning("bulk lane: accept failed (%s); still listening", exc)  # EMFILE, a peer's reset, ...
                time.sleep(0.1)
                continue
            host = str(source[0])
            if not self._admit(conn, host):
                self.handler.count_refusal("bulk_busy")
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, host), name="potluck-bulk-conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: drop this connection, keep listening
                log.warning("bulk lane: cannot serve a connection: %s", exc)
                with self._lock:
                    self._threads.discard(thread)
                    self._open.discard(conn)
                    self._handshake_done(host)
                conn.close()

    def _admit(self, conn: socket.socket, host: str) -> bool:
        """Room for one more connection, in its handshake, from ``host``; taken if so."""
        with self._lock:
            room = len(self._open) < self.options.max_connections and \
                sum(self._handshaking.values()) < self.options.max_handshakes and \
                self._handshaking[host] < self.options.max_handshakes_per_address
            if room:
                self._open.add(conn)
                self._handshaking[host] += 1
            return room

    def _handshake_done(self, host: str) -> None:
        """Under the lock."""
        self._handshaking[host] -= 1
        if not self._handshaking[host]:
            del self._handshaking[host]

    def _serve(self, conn: socket.socket, host: str) -> None:
        current: socket.socket = conn  # what stop() must shut: the TLS socket takes over conn's descriptor
        peer: str | None = None
        handshaking = True
        # A deadline for the whole handshake (the socket's timeout bounds each read only);
        # a little later than that timeout, so a silent peer is counted as one.
        timer = threading.Timer(self.options.handshake_timeout + 0.5, shut, args=(conn,))
        try:
            conn.settimeout(self.options.handshake_timeout)
            timer.start()
            with self.context.wrap_socket(conn, server_side=True) as tls:
                timer.cancel()
                peer, der = common_name(tls), tls.getpeercert(binary_form=True) or b""
                with self._lock:
                    self._open.discard(conn)
                    self._open.add(tls)
                    current = tls
                    self._handshake_done(host)
                    handshaking = False
                    if peer is not None:
                        self._per_node[peer] += 1
                    crowded = peer is not None and self._per_node[peer] > self.options.max_per_node
                if peer is None or crowded:  # gRPC refuses a certificate without a common name too
                    self.handler.count_refusal("identity" if peer is None else "bulk_busy")
                    return
                while not self._stopped and self._request(tls, peer, der):
                    pass
        except (ssl.SSLError, OSError, EOFError, ValueError) as exc:  # ValueError: a socket shut by stop()
            log.debug("bulk connection closed: %s", exc)
            if isinstance(exc, TimeoutError):
                self.handler.count_refusal("bulk_timeout")
            elif handshaking:
                self.handler.count_refusal("bulk_handshake")
        finally:
            timer.cancel()
            with self._lock:
                self._open.discard(current)
                self._open.discard(conn)
                if handshaking:
                    self._handshake_done(host)
                if peer is not None:
                    self._per_node[peer] -= 1
                self._threads.discard(threading.current_thread())
            conn.close()

    def _request(self, tls: ssl.SSLSocket, peer: str, der: bytes) -> bool:
        """Serve one request of the peer whose certificate is ``der``; False when the connection should close."""
        tls.settimeout(self.options.idle_timeout)
        head = bytearray(REQUEST.size)
        try:
            first = tls.recv_into(head)
        except TimeoutError:
            return False  # idle: the node reconnects when it needs the lane again
        if first == 0:
            return False  # the node closed the connection between requests
        tls.settimeout(self.options.io_timeout)
        deadline = time.monotonic() + self.options.io_timeout
        recv_exact(tls, memoryview(head)[first:], deadline)
        magic, op, header_len = REQUEST.unpack(head)
        try:
            if self.revocations is not None:  # before anything more of the request is read
                self.revocations.check_der(der, self.handler.count_refusal)
            if magic != MAGIC or op not in (GET, PUT) or header_len > self.options.max_header_bytes:
                self.handler.count_refusal("bulk_malformed")
                raise WireError(f"not a bulk-lane request (magic {bytes(magic)!r}, op {op!r}, header {header_len:,} bytes)")
            raw = bytearray(header_len)
            recv_exact(tls, memoryview(raw), deadline)
            if op == GET:
                self._get(tls, raw, peer)
                return True
            duplicate = self._put(tls, raw, peer)
        except PotluckError as exc:
            body = details_of(exc).encode()
            tls.sendall(REPLY.pack(ERROR, len(body)) + body)
            # Refused before its payload or after all of it, the stream is in step; a
            # malformed request, or a payload cut short, leaves it out of step: close.
            return not isinstance(exc, (WireError, CertificateRevoked)) and \
                not (isinstance(exc, PayloadError) and exc.reason == "truncated")
        self._count("put")  # before the reply: the node may act on it at once
        tls.sendall(REPLY.pack(OK, 1) + (b"\x01" if duplicate else b"\x00"))
        return True

    def _get(self, tls: ssl.SSLSocket, raw: bytearray, peer: str) -> None:
        request = _parse(pb.PayloadRequest, raw, self.handler)
        payload = self.handler.pulled_payload(request.session, request.instruction_id, peer)
        tls.sendall(REPLY.pack(OK, len(payload)))
        tls.sendall(payload)
        self._count("get")

    def _put(self, tls: ssl.SSLSocket, raw: bytearray, peer: str) -> bool:
        """Check the header, say go ahead, receive the payload, hand it on; True if a repeat."""
        header = _parse(pb.ResultHeader, raw, self.handler)
        self.handler.check_push(header, peer)  # refused before a byte of payload moves, oversize included
        tls.sendall(REPLY.pack(CONTINUE, 0))
        try:
            payload = recv_payload(tls, header.params_size, header.params_blake3,
                                   payload_deadline(header.params_size, self.options.io_timeout))
        except PayloadError as exc:
            self.handler.count_refusal(f"payload_{exc.reason}")
            raise
        return self.handler.push(header, payload, peer)


def _parse(cls: type, raw: bytearray, handler: BulkHandler):  # type: ignore[no-untyped-def]
    try:
        return cls.FromString(bytes(raw))
    except DecodeError as exc:
        handler.count_refusal("malformed")
        raise WireError(f"malformed {cls.__name__}: {exc}") from None
