"""The bulk lane: parameter payloads over a mutual-TLS socket beside gRPC.

gRPC moves a model-sized payload at about 60 % of a TLS socket's throughput on this
kind of machine (HTTP/2 framing, a copy and a thread hop per message), and payloads are
nearly all of a round's bytes. So the server opens a second port for them; everything
else (joins, instruction and result headers, heartbeats, the ledger) stays on gRPC, and
the lane reuses gRPC's messages and error texts. A node that cannot reach the lane
falls back to gRPC chunks (``client.py``), so a closed port costs speed, not the run.

Wire, after a mutual-TLS handshake (the node's id is its certificate's common name, as
on gRPC); a connection carries any number of requests, one after the other::

    request = "PLB1" op:1 header_len:u32 header [payload]        (integers big-endian)
      op "G": header = PayloadRequest            → the pulled instruction's payload
      op "P": header = ResultHeader, then params_size bytes of payload (a push)
    reply   = status:1 body_len:u64 body
      status 0: the payload (G), or one byte 1/0: a repeated push or not (P)
      status 1: the error as gRPC's details carry it ("Kind: message", status.py)

Payloads are checked as on gRPC: size limit before reading, BLAKE3 digest on arrival.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3
import numpy as np
from google.protobuf.message import DecodeError

from potluck.core.errors import PotluckError, TransportError
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import PayloadError
from potluck.transport.convert import WireError
from potluck.transport.status import details_of, error_from_details
from potluck.transport.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)

MAGIC = b"PLB1"
GET, PUT = b"G", b"P"
OK, ERROR = 0, 1
_REQUEST = struct.Struct(">4scI")  # magic, op, header length
_REPLY = struct.Struct(">BQ")  # status, body length
MIN_BULK_BYTES = 2**20  # smaller payloads are not worth a second connection
CONNECT_TIMEOUT = 5.0
_HASH_SPAN = 2**20  # hash the received bytes in spans this long, not per TLS record


def _recv_exact(sock: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError(f"connection closed after {got:,} of {len(view):,} bytes")
        got += n


def _recv_payload(sock: ssl.SSLSocket, size: int, digest: str) -> memoryview:
    """``size`` bytes whose BLAKE3 must be ``digest``; PayloadError("digest") otherwise.

    Received into a buffer nobody else holds and handed out read-only, so Params.decode
    can view it without a copy (bytearray would zero it first, and bytes() copy it again).
    """
    buf = np.empty(size, np.uint8)
    view, hasher, got, hashed = memoryview(buf), blake3.blake3(), 0, 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise PayloadError("truncated", f"payload ended after {got:,} of {size:,} bytes")
        got += n
        if got - hashed >= _HASH_SPAN or got == size:
            hasher.update(view[hashed:got])
            hashed = got
    if hasher.hexdigest() != digest:
        raise PayloadError("digest", "payload does not match its BLAKE3 digest")
    return view.toreadonly()


def _context_files(tls: PemBundle, load: Callable[[str, str], None]) -> None:
    """``load(certfile, keyfile)`` from the bundle's PEM bytes (ssl reads only files):
    written to a private temporary directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="potluck-bulk-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(tls.cert)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(tls.key)
        load(str(cert), str(key))


def server_context(tls: PemBundle) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=tls.ca.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as on the gRPC port
    _context_files(tls, ctx.load_cert_chain)
    return ctx


def client_context(tls: PemBundle) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=tls.ca.decode())
    _context_files(tls, ctx.load_cert_chain)
    return ctx


def _common_name(sock: ssl.SSLSocket) -> str | None:
    for rdn in (sock.getpeercert() or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class BulkHandler(Protocol):
    """What the lane needs of the server (``FleetServicer`` provides it)."""

    max_payload_bytes: int

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes: ...

    def push(self, header: pb.ResultHeader, payload: memoryview, peer: str | None) -> bool: ...

    def refused(self, reason: str) -> None: ...


@dataclass(frozen=True)
class BulkOptions:
    handshake_timeout: float = 10.0  # a connection that has not finished TLS by then is closed
    io_timeout: float = 30.0  # a request stalled this long mid-way is dropped
    idle_timeout: float = 600.0  # an open connection with no request this long is closed
    max_connections: int = 256
    max_header_bytes: int = 2**16


class BulkServer:
    """The lane's listener: a thread per connection, at most ``max_connections``."""

    def __init__(self, handler: BulkHandler, address: str, tls: PemBundle, options: BulkOptions | None = None) -> None:
        self.handler, self.options = handler, options or BulkOptions()
        self.context = server_context(tls)
        host, _, port = address.rpartition(":")
        self._listener = socket.create_server((host.strip("[]") or "0.0.0.0", int(port)),
                                              family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port: int = self._listener.getsockname()[1]
        self.transfers: Counter[str] = Counter()  # "get" / "put": payloads moved over the lane
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="potluck-bulk", daemon=True)

    def start(self) -> BulkServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected: closing is enough
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                if len(self._open) >= self.options.max_connections:
                    self.handler.refused("bulk_busy")
                    conn.close()
                    continue
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="potluck-bulk-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        current: socket.socket = conn  # what stop() must shut: the TLS socket takes over conn's descriptor
        try:
            conn.settimeout(self.options.handshake_timeout)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                with self._lock:
                    self._open.discard(conn)
                    self._open.add(tls)
                    current = tls
                peer = _common_name(tls)
                while not self._stopped and self._request(tls, peer):
                    pass
        except (ssl.SSLError, OSError, EOFError) as exc:
            log.debug("bulk connection closed: %s", exc)
            if isinstance(exc, (ssl.SSLError, TimeoutError)):
                self.handler.refused("bulk_handshake" if isinstance(exc, ssl.SSLError) else "bulk_timeout")
        finally:
            with self._lock:
                self._open.discard(current)
                self._open.discard(conn)
            conn.close()

    def _request(self, tls: ssl.SSLSocket, peer: str | None) -> bool:
        """Serve one request; False when the connection should close."""
        tls.settimeout(self.options.idle_timeout)
        head = bytearray(_REQUEST.size)
        try:
            first = tls.recv_into(head)
        except TimeoutError:
            return False  # idle: the node reconnects when it needs the lane again
        if first == 0:
            return False  # the node closed the connection between requests
        tls.settimeout(self.options.io_timeout)
        _recv_exact(tls, memoryview(head)[first:])
        magic, op, header_len = _REQUEST.unpack(head)
        try:
            if magic != MAGIC or op not in (GET, PUT) or header_len > self.options.max_header_bytes:
                self.handler.refused("bulk_malformed")
                raise WireError(f"not a bulk-lane request (magic {bytes(magic)!r}, op {op!r}, header {header_len:,} bytes)")
            raw = bytearray(header_len)
            _recv_exact(tls, memoryview(raw))
            if op == GET:
                request = _parse(pb.PayloadRequest, raw, self.handler)
                payload = self.handler.pulled_payload(request.session, request.instruction_id, peer)
                tls.sendall(_REPLY.pack(OK, len(payload)))
                tls.sendall(payload)
                self.transfers["get"] += 1
                return True
            header = _parse(pb.ResultHeader, raw, self.handler)
            if header.params_size > self.handler.max_payload_bytes:
                self.handler.refused("payload_oversize")
                raise PayloadError("oversize", f"payload of {header.params_size:,} bytes exceeds the limit of "
                                               f"{self.handler.max_payload_bytes:,} bytes")
            try:
                payload = _recv_payload(tls, header.params_size, header.params_blake3)
            except PayloadError as exc:
                self.handler.refused(f"payload_{exc.reason}")
                raise
            duplicate = self.handler.push(header, payload, peer)
        except PotluckError as exc:
            body = details_of(exc).encode()
            tls.sendall(_REPLY.pack(ERROR, len(body)) + body)
            # A refused push may still have payload bytes on their way, a malformed request
            # leaves the stream out of step: close. A refused fetch leaves it in step.
            return op == GET and not isinstance(exc, WireError)
        self.transfers["put"] += 1  # before the reply: the node may act on it at once
        tls.sendall(_REPLY.pack(OK, 1) + (b"\x01" if duplicate else b"\x00"))
        return True


def _parse(cls: type, raw: bytearray, handler: BulkHandler):  # type: ignore[no-untyped-def]
    try:
        return cls.FromString(bytes(raw))
    except DecodeError as exc:
        handler.refused("malformed")
        raise WireError(f"malformed {cls.__name__}: {exc}") from None


class BulkClient:
    """A node's connection to the lane, opened on first use and kept. Every failure to
    reach or talk to it is a :class:`TransportError` (the caller falls back to gRPC);
    the server's refusals come back as their own kinds, as on gRPC."""

    def __init__(self, host: str, port: int, tls: PemBundle, *, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.context = client_context(tls)
        self._sock: ssl.SSLSocket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connection(self) -> ssl.SSLSocket:
        if self._sock is None:
            # A short connect timeout: a firewall that drops packets must not hold a round up.
            raw = socket.create_connection((self.host.strip("[]"), self.port), timeout=min(CONNECT_TIMEOUT, self.timeout))
            raw.settimeout(self.timeout)
            try:
                self._sock = self.context.wrap_socket(raw, server_hostname=self.host.strip("[]"))
            except BaseException:
                raw.close()
                raise
        return self._sock

    def _call(self, op: bytes, header: bytes, payload: bytes | memoryview | None,
              receive: Callable[[ssl.SSLSocket, int], Any]) -> Any:
        try:
            sock = self._connection()
            sock.sendall(_REQUEST.pack(MAGIC, op, len(header)) + header)
            if payload is not None:
                sock.sendall(payload)
            reply = bytearray(_REPLY.size)
            _recv_exact(sock, memoryview(reply))
            status, length = _REPLY.unpack(reply)
            if status != OK:
                text = bytearray(min(length, 2**16))
                _recv_exact(sock, memoryview(text))
                self.close()  # the server may close after a refusal: start afresh next time
                details = text.decode(errors="replace")
                raise error_from_details(details) or TransportError(f"bulk lane refused: {details}")
            return receive(sock, length)
        except (OSError, EOFError, ssl.SSLError) as exc:
            self.close()
            raise TransportError(f"bulk lane {self.host}:{self.port} failed: {exc}") from exc

    def get(self, session: str, instruction_id: str, size: int, digest: str) -> memoryview:
        """The payload of a pulled instruction announced as ``size`` bytes with ``digest``."""
        def receive(sock: ssl.SSLSocket, length: int) -> memoryview:
            if length != size:
                self.close()
                raise PayloadError("overrun" if length > size else "truncated",
                                   f"bulk lane sends {length:,} bytes, the instruction announced {size:,}")
            return _recv_payload(sock, size, digest)

        header = pb.PayloadRequest(session=session, instruction_id=instruction_id).SerializeToString()
        return self._call(GET, header, None, receive)

    def put(self, header: pb.ResultHeader, payload: bytes | memoryview) -> bool:
        """Push a result whose header announces ``payload``; True if it was a repeat."""
        def receive(sock: ssl.SSLSocket, length: int) -> bytes:
            if length != 1:
                raise EOFError(f"bulk lane push reply of {length} bytes")
            flag = bytearray(1)
            _recv_exact(sock, memoryview(flag))
            return bytes(flag)

        return self._call(PUT, header.SerializeToString(), payload, receive) == b"\x01"

