"""A node's connection to the bulk lane (see ``bulk/__init__``)."""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from potluck.core.errors import TransportError
from potluck.transport.addresses import bare_host
from potluck.transport.bulk.wire import (
    CONTINUE,
    ERROR,
    GET,
    MAGIC,
    OK,
    PUT,
    REPLY,
    REQUEST,
    client_context,
    recv_exact,
    recv_payload,
)
from potluck.transport.certs import PemBundle
from potluck.transport.chunks import PayloadError
from potluck.transport.status import error_from_details
from potluck.transport.v1 import fleet_pb2 as pb

CONNECT_TIMEOUT = 5.0
CLIENT_IDLE = 240.0  # the node reconnects after this long unused, well before the server's idle_timeout


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
        raw = socket.create_connection((bare_host(self.host), self.port), timeout=min(CONNECT_TIMEOUT, self.timeout))
        raw.settimeout(self.timeout)
        try:
            self._sock = self.context.wrap_socket(raw, server_hostname=bare_host(self.host))
        except BaseException:
            raw.close()
            raise
        return self._sock, True

    def _reply(self, sock: ssl.SSLSocket) -> tuple[int, int]:
        """(status, body length); the server's refusal raised as its own kind."""
        reply = bytearray(REPLY.size)
        recv_exact(sock, memoryview(reply))
        status, length = REPLY.unpack(reply)
        if status == ERROR:
            text = bytearray(min(length, 2**16))
            recv_exact(sock, memoryview(text))
            self.close()  # the server may close after a refusal: start afresh next time
            details = text.decode(errors="replace")
            raise error_from_details(details)
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
            sock.sendall(REQUEST.pack(MAGIC, GET, len(header)) + header)
            status, length = self._reply(sock)
            if status != OK or length != size:
                raise _CutShort(f"the lane sends {length:,} bytes (status {status}), the instruction announced {size:,}")
            try:
                return recv_payload(sock, size, digest, math.inf)  # the socket's timeout bounds each read
            except PayloadError as exc:
                if exc.reason == "truncated":  # a cut connection, not a bad payload
                    raise _CutShort(str(exc)) from exc
                raise

        return self._call(run)  # type: ignore[no-any-return]

    def put(self, header: pb.ResultHeader, payload: bytes | memoryview) -> bool:
        """Push a result whose header announces ``payload``; True if it was a repeat."""
        raw = header.SerializeToString()

        def run(sock: ssl.SSLSocket) -> bool:
            sock.sendall(REQUEST.pack(MAGIC, PUT, len(raw)) + raw)
            status, _ = self._reply(sock)  # go ahead, or the refusal
            if status != CONTINUE:
                raise _CutShort(f"the lane answered a push header with status {status}")
            sock.sendall(payload)
            status, length = self._reply(sock)
            flag = bytearray(1)
            if status != OK or length != 1:
                raise _CutShort(f"the lane answered a push with status {status} and {length} bytes")
            recv_exact(sock, memoryview(flag))
            return flag == b"\x01"

        return self._call(run)  # type: ignore[no-any-return]


class _CutShort(Exception):
    """The lane's stream ended or went out of step: a transport failure."""
