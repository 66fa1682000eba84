"""The bulk lane's framing and TLS contexts, shared by its server and client (see ``bulk/__init__``)."""

from __future__ import annotations

import math
import os
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import numpy as np

from potluck.transport.certs import CertificateError, PemBundle
from potluck.transport.chunks import PayloadError

MAGIC = b"PLB1"
GET, PUT = b"G", b"P"
OK, ERROR, CONTINUE = 0, 1, 2
REQUEST = struct.Struct(">4scI")  # magic, op, header length
REPLY = struct.Struct(">BQ")  # status, body length
MIN_BULK_BYTES = 2**20  # smaller payloads are not worth a second connection
MIN_RATE = 64 * 2**10  # bytes/s: a payload slower than this on top of io_timeout is dropped
HASH_SPAN = 2**20  # hash the received bytes in spans this long, not per TLS record


def recv_exact(sock: ssl.SSLSocket, view: memoryview, deadline: float = math.inf) -> None:
    got = 0
    while got < len(view):
        if time.monotonic() > deadline:
            raise TimeoutError(f"too slow: {got:,} of {len(view):,} bytes by the deadline")
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError(f"connection closed after {got:,} of {len(view):,} bytes")
        got += n


def recv_payload(sock: ssl.SSLSocket, size: int, digest: str, deadline: float) -> memoryview:
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
        if got - hashed >= HASH_SPAN or got == size:
            hasher.update(view[hashed:got])
            hashed = got
    view.release()
    if hasher.hexdigest() != digest:
        raise PayloadError("digest", "payload does not match its BLAKE3 digest")
    buf.setflags(write=False)  # Params.decode trusts only an owned, read-only array (see there)
    return memoryview(buf)


def payload_deadline(size: int, io_timeout: float) -> float:
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


def _context(tls: PemBundle, purpose: ssl.Purpose) -> ssl.SSLContext:
    """A TLS context trusting the bundle's CA and presenting its certificate; CertificateError
    (not ssl's own error) for PEM material that ssl cannot use."""
    try:
        ctx = ssl.create_default_context(purpose, cadata=tls.ca.decode("ascii"))
        _context_files(tls, ctx.load_cert_chain)
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise CertificateError(f"the bulk lane cannot use this TLS material: {exc}") from None
    except OSError as exc:  # the private temporary directory for the key
        raise CertificateError(f"the bulk lane cannot stage its TLS files: {exc.strerror or exc}") from exc
    return ctx


def server_context(tls: PemBundle) -> ssl.SSLContext:
    ctx = _context(tls, ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as on the gRPC port
    return ctx


def client_context(tls: PemBundle) -> ssl.SSLContext:
    return _context(tls, ssl.Purpose.SERVER_AUTH)


def common_name(sock: ssl.SSLSocket) -> str | None:
    for rdn in (sock.getpeercert() or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None



def shut(sock: socket.socket) -> None:
    """Shut both directions at the descriptor. For a TLS socket this bypasses
    SSLSocket.shutdown, which drops its TLS state first: a thread writing at that moment
    would fall through to the plain socket."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already shut
