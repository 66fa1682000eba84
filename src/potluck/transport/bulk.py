"""The bulk lane: parameter payloads over a mutual-TLS socket beside gRPC.

gRPC moves a model-sized payload at about 60 % of a TLS socket's throughput on this
kind of machine (HTTP/2 framing, a copy and a thread hop per message), and payloads are
nearly all of a round's bytes. So the server opens a second port for them; everything
else (joins, instruction and result headers, heartbeats, the ledger) stays on gRPC, and
the lane reuses gRPC's messages and error texts. A node that cannot reach the lane
falls back to gRPC chunks (``client.py``), so a closed port costs speed, not the run.

Wire, after a mutual-TLS handshake (the node's id is its certificate's common name, as
on gRPC); a connection carries any number of requests, one after the other::

    request = "PLB1" op:1 header_len:u32 header                 (integers big-endian)
    reply   = status:1 body_len:u64 body
      op "G": header = PayloadRequest → status 0 and the pulled instruction's payload
      op "P": header = ResultHeader → status 2 (go ahead, empty body); the node sends
              params_size bytes of payload → status 0 and one byte: 1 if it was a repeat
      status 1: the error as gRPC's details carry it ("Kind: message", status.py)

A push is checked (session, identity, instruction, size) before its payload moves, and
its payload as on gRPC: the BLAKE3 digest on arrival. Every step has a deadline, so a
slow or silent peer cannot hold a connection's thread.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
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
OK, ERROR, CONTINUE = 0, 1, 2
_REQUEST = struct.Struct(">4scI")  # magic, op, header length
_REPLY = struct.Struct(">BQ")  # status, body length
MIN_BULK_BYTES = 2**20  # smaller payloads are not worth a second connection
CONNECT_TIMEOUT = 5.0
MIN_RATE = 64 * 2**10  # bytes/s: a payload slower than this on top of io_timeout is dropped
CLIENT_IDLE = 240.0  # the node reconnects after this long unused, well before the server's idle_timeout
_HASH_SPAN = 2**20  # hash the received bytes in spans this long, not per TLS record


def _recv_exact(sock: ssl.SSLSocket, view: memoryview, deadline: float = math.inf) -> None:
    got = 0
    while got < len(view):
        if time.monotonic() > deadline:
            raise TimeoutError(f"too slow: {got:,} of {len(view):,} bytes by the deadline")
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError(f"connection closed after {got:,} of {len(view):,} bytes")
        got += n


def _recv_payload(sock: ssl.SSLSocket, size: int, digest: str, deadline: float) -> memoryview:
    """``size`` bytes whose BLAKE3 must be ``digest``: PayloadError("truncated") when the
    peer closes early, PayloadError("digest") when they do not match.

    Received into a buffer nobody else holds and handed out read-only, so Params.decode
    can view it without a copy (bytearray would zero it first, and bytes() copy it again).
    """
    buf = np.empty(size, np.uint8)
    view, hasher, got, hashed = memoryview(buf), blake3.blake3(), 0, 0
    while got < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"payload too slow: {got:,} of {size:,} bytes by the deadline")
        n = sock.recv_into(view[got:])
        if n == 0:
            raise PayloadError("truncated", f"payload ended after {got:,} of {size:,} bytes")
        got += n
        if got - hashed >= _HASH_SPAN or got == size:
            hasher.update(view[hashed:got])
            hashed = got
    view.release()
    if hasher.hexdigest() != digest:
        raise PayloadError("digest", "payload does not match its BLAKE3 digest")
    buf.setflags(write=False)  # Params.decode trusts only an owned, read-only array (see there)
    return memoryview(buf)


def _payload_deadline(size: int, io_timeout: float) -> float:
    return time.monotonic() + io_timeout + size / MIN_RATE


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

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview: ...

    def check_push(self, header: pb.ResultHeader, peer: str | None) -> None:
        """Raise the error a push with this header would meet, before its payload moves."""

    def push(self, header: pb.ResultHeader, payload: memoryview, peer: str | None) -> bool: ...

    def refused(self, reason: str) -> None: ...


@dataclass(frozen=True)
class BulkOptions:
    handshake_timeout: float = 10.0  # a connection that has not finished TLS by then is closed
    io_timeout: float = 30.0  # a request's header must arrive within this; a payload within this + size / MIN_RATE
    idle_timeout: float = 600.0  # an open connection with no request this long is closed
    max_connections: int = 1024
    max_handshakes: int = 64  # connections still in their TLS handshake
    max_per_node: int = 4  # connections per certificate common name
    max_header_bytes: int = 2**20


class BulkServer:
    """The lane's listener: a thread per connection, within the limits of ``options``."""

    def __init__(self, handler: BulkHandler, address: str, tls: PemBundle, options: BulkOptions | None = None) -> None:
        self.handler, self.options = handler, options or BulkOptions()
        self.context = server_context(tls)
        host, _, port = address.rpartition(":")
        self._listener = socket.create_server((host.strip("[]") or "0.0.0.0", int(port)),
                                              family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port: int = self._listener.getsockname()[1]
        self.transfers: Counter[str] = Counter()  # "get" / "put": payloads moved over the lane
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._handshaking = 0
        self._per_node: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="potluck-bulk", daemon=True)

    def start(self) -> BulkServer:
        self._thread.start()
        return self

    def stop(self, wait: float = 5.0) -> None:
        self._stopped = True
        _shut(self._listener)
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                _shut(conn)
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
                conn, _ = self._listener.accept()
            except OSError as exc:
                if self._stopped:
                    return
                log.warning("bulk lane: accept failed (%s); still listening", exc)  # EMFILE, a peer's reset, ...
                time.sleep(0.1)
                continue
            with self._lock:
                busy = len(self._open) >= self.options.max_connections or \
                    self._handshaking >= self.options.max_handshakes
                if not busy:
                    self._open.add(conn)
                    self._handshaking += 1
            if busy:
                self.handler.refused("bulk_busy")
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="potluck-bulk-conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: drop this connection, keep listening
                log.warning("bulk lane: cannot serve a connection: %s", exc)
                with self._lock:
                    self._threads.discard(thread)
                    self._open.discard(conn)
                    self._handshaking -= 1
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        current: socket.socket = conn  # what stop() must shut: the TLS socket takes over conn's descriptor
        peer: str | None = None
        handshaking = True
        # A deadline for the whole handshake (the socket's timeout bounds each read only);
        # a little later than that timeout, so a silent peer is counted as one.
        timer = threading.Timer(self.options.handshake_timeout + 0.5, _shut, args=(conn,))
        try:
            conn.settimeout(self.options.handshake_timeout)
            timer.start()
            with self.context.wrap_socket(conn, server_side=True) as tls:
                timer.cancel()
                peer = _common_name(tls)
                with self._lock:
                    self._open.discard(conn)
                    self._open.add(tls)
                    current = tls
                    self._handshaking -= 1
                    handshaking = False
                    if peer is not None:
                        self._per_node[peer] += 1
                    crowded = peer is not None and self._per_node[peer] > self.options.max_per_node
                if peer is None or crowded:  # gRPC refuses a certificate without a common name too
                    self.handler.refused("identity" if peer is None else "bulk_busy")
                    return
                while not self._stopped and self._request(tls, peer):
                    pass
        except (ssl.SSLError, OSError, EOFError, ValueError) as exc:  # ValueError: a socket shut by stop()
            log.debug("bulk connection closed: %s", exc)
            if isinstance(exc, TimeoutError):
                self.handler.refused("bulk_timeout")
            elif handshaking:
                self.handler.refused("bulk_handshake")
        finally:
            timer.cancel()
            with self._lock:
                self._open.discard(current)
                self._open.discard(conn)
                if handshaking:
                    self._handshaking -= 1
                if peer is not None:
                    self._per_node[peer] -= 1
                self._threads.discard(threading.current_thread())
            conn.close()

    def _request(self, tls: ssl.SSLSocket, peer: str) -> bool:
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
        deadline = time.monotonic() + self.options.io_timeout
        _recv_exact(tls, memoryview(head)[first:], deadline)
        magic, op, header_len = _REQUEST.unpack(head)
        try:
            if magic != MAGIC or op not in (GET, PUT) or header_len > self.options.max_header_bytes:
                self.handler.refused("bulk_malformed")
                raise WireError(f"not a bulk-lane request (magic {bytes(magic)!r}, op {op!r}, header {header_len:,} bytes)")
            raw = bytearray(header_len)
            _recv_exact(tls, memoryview(raw), deadline)
            if op == GET:
                request = _parse(pb.PayloadRequest, raw, self.handler)
                payload = self.handler.pulled_payload(request.session, request.instruction_id, peer)
                tls.sendall(_REPLY.pack(OK, len(payload)))
                tls.sendall(payload)
                self._count("get")
                return True
            header = _parse(pb.ResultHeader, raw, self.handler)
            if header.params_size > self.handler.max_payload_bytes:
                self.handler.refused("payload_oversize")
                raise PayloadError("oversize", f"payload of {header.params_size:,} bytes exceeds the limit of "
                                               f"{self.handler.max_payload_bytes:,} bytes")
            self.handler.check_push(header, peer)  # refused before a byte of payload moves
            tls.sendall(_REPLY.pack(CONTINUE, 0))
            try:
                payload = _recv_payload(tls, header.params_size, header.params_blake3,
                                        _payload_deadline(header.params_size, self.options.io_timeout))
            except PayloadError as exc:
                self.handler.refused(f"payload_{exc.reason}")
                raise
            duplicate = self.handler.push(header, payload, peer)
        except PotluckError as exc:
            body = details_of(exc).encode()
            tls.sendall(_REPLY.pack(ERROR, len(body)) + body)
            # Refused before its payload or after all of it, the stream is in step; a
            # malformed request, or a payload cut short, leaves it out of step: close.
            return not isinstance(exc, WireError) and not (isinstance(exc, PayloadError) and exc.reason == "truncated")
        self._count("put")  # before the reply: the node may act on it at once
        tls.sendall(_REPLY.pack(OK, 1) + (b"\x01" if duplicate else b"\x00"))
        return True


def _shut(sock: socket.socket) -> None:
    """Shut both directions at the descriptor. For a TLS socket this bypasses
    SSLSocket.shutdown, which drops its TLS state first: a thread writing at that moment
    would fall through to the plain socket."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already shut


def _parse(cls: type, raw: bytearray, handler: BulkHandler):  # type: ignore[no-untyped-def]
    try:
        return cls.FromString(bytes(raw))
    except DecodeError as exc:
        handler.refused("malformed")
        raise WireError(f"malformed {cls.__name__}: {exc}") from None


class BulkClient:
    """A node's connection to the lane, opened on first use and kept (closed after
    CLIENT_IDLE unused). Every failure to reach or talk to it is a :class:`TransportError`
    (the caller falls back to gRPC); the server's refusals come back as their own
    kinds, as on gRPC. A kept connection that turns out dead is replaced once at once:
    both requests can be repeated (a push repeated is acknowledged as a duplicate)."""

    def __init__(self, host: str, port: int, tls: PemBundle, *, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.context = client_context(tls)
        self._sock: ssl.SSLSocket | None = None
        self._last_used = 0.0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connection(self) -> tuple[ssl.SSLSocket, bool]:
        """The connection, and whether it was opened just now."""
        if self._sock is not None and time.monotonic() - self._last_used > CLIENT_IDLE:
            self.close()
        if self._sock is not None:
            return self._sock, False
        # A short connect timeout: a firewall that drops packets must not hold a round up.
        raw = socket.create_connection((self.host.strip("[]"), self.port), timeout=min(CONNECT_TIMEOUT, self.timeout))
        raw.settimeout(self.timeout)
        try:
            self._sock = self.context.wrap_socket(raw, server_hostname=self.host.strip("[]"))
        except BaseException:
            raw.close()
            raise
        return self._sock, True

    def _reply(self, sock: ssl.SSLSocket) -> tuple[int, int]:
        """(status, body length); the server's refusal raised as its own kind."""
        reply = bytearray(_REPLY.size)
        _recv_exact(sock, memoryview(reply))
        status, length = _REPLY.unpack(reply)
        if status == ERROR:
            text = bytearray(min(length, 2**16))
            _recv_exact(sock, memoryview(text))
            self.close()  # the server may close after a refusal: start afresh next time
            details = text.decode(errors="replace")
            raise error_from_details(details) or TransportError(f"bulk lane refused: {details}")
        return status, length

    def _call(self, run: Callable[[ssl.SSLSocket], Any]) -> Any:
        for attempt in (1, 2):
            fresh = False
            try:
                sock, fresh = self._connection()
                out = run(sock)
                self._last_used = time.monotonic()
                return out
            except (OSError, EOFError, ssl.SSLError, _CutShort) as exc:
                self.close()
                if attempt == 1 and not fresh:
                    continue  # a kept connection the server dropped meanwhile: once more on a new one
                raise TransportError(f"bulk lane {self.host}:{self.port} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def get(self, session: str, instruction_id: str, size: int, digest: str) -> memoryview:
        """The payload of a pulled instruction announced as ``size`` bytes with ``digest``."""
        header = pb.PayloadRequest(session=session, instruction_id=instruction_id).SerializeToString()

        def run(sock: ssl.SSLSocket) -> memoryview:
            sock.sendall(_REQUEST.pack(MAGIC, GET, len(header)) + header)
            status, length = self._reply(sock)
            if status != OK or length != size:
                raise _CutShort(f"the lane sends {length:,} bytes (status {status}), the instruction announced {size:,}")
            try:
                return _recv_payload(sock, size, digest, math.inf)  # the socket's timeout bounds each read
            except PayloadError as exc:
                if exc.reason == "truncated":  # a cut connection, not a bad payload
                    raise _CutShort(str(exc)) from exc
                raise

        return self._call(run)  # type: ignore[no-any-return]

    def put(self, header: pb.ResultHeader, payload: bytes | memoryview) -> bool:
        """Push a result whose header announces ``payload``; True if it was a repeat."""
        raw = header.SerializeToString()

        def run(sock: ssl.SSLSocket) -> bool:
            sock.sendall(_REQUEST.pack(MAGIC, PUT, len(raw)) + raw)
            status, _ = self._reply(sock)  # go ahead, or the refusal
            if status != CONTINUE:
                raise _CutShort(f"the lane answered a push header with status {status}")
            sock.sendall(payload)
            status, length = self._reply(sock)
            flag = bytearray(1)
            if status != OK or length != 1:
                raise _CutShort(f"the lane answered a push with status {status} and {length} bytes")
            _recv_exact(sock, memoryview(flag))
            return flag == b"\x01"

        return self._call(run)  # type: ignore[no-any-return]


class _CutShort(Exception):
    """The lane's stream ended or went out of step: a transport failure."""
