"""The peer lane: request/reply frames over mutual TLS between peers (asyncio streams).

The TLS contexts are the bulk lane's (``transport/bulk.py``): the project CA verifies
both sides. Host names are not checked, because peers dial addresses taken from DHT
records; instead the dialler checks that the accepting peer's certificate is exactly
the one its signed member record carries (SHA-256 fingerprint), and the acceptor hands
its handler the dialler's certificate CN and fingerprint to check the same way.

Frame (integers big-endian), one request then one reply per connection::

    "PLP1"  header_len:u32  payload_len:u64  header (JSON object)  payload (bytes)

A header over 64 KiB or a payload over ``max_payload`` is refused before it is read.
Every read and write has a deadline: a peer that stalls costs at most ``timeout``.
A reply header ``{"ok": false, "error": TEXT}`` is raised to the caller as PeerRefused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from potluck.core.errors import AccessDenied, PeerRefused, PotluckError, TransportError
from potluck.peer.identity import PeerIdentity
from potluck.transport.bulk.wire import client_context, server_context

log = logging.getLogger(__name__)

MAGIC = b"PLP1"
_PREFIX = struct.Struct(">4sIQ")
MAX_HEADER = 64 * 1024
Header = dict[str, Any]


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of an accepted connection (from its TLS certificate)."""

    peer_id: str
    fingerprint: str


Handler = Callable[[Caller, Header, bytes], Awaitable[tuple[Header, bytes]]]


async def read_frame(reader: asyncio.StreamReader, max_payload: int, timeout: float) -> tuple[Header, bytes]:
    """One frame; TransportError if it is malformed, too large or slower than ``timeout``."""
    try:
        prefix = await asyncio.wait_for(reader.readexactly(_PREFIX.size), timeout)
        magic, header_len, payload_len = _PREFIX.unpack(prefix)
        if magic != MAGIC or header_len > MAX_HEADER or payload_len > max_payload:
            raise TransportError(f"refused a frame: magic {magic!r}, header {header_len:,} B, "
                                 f"payload {payload_len:,} B (limit {max_payload:,} B)")
        raw = await asyncio.wait_for(reader.readexactly(header_len + payload_len), timeout)
    except asyncio.IncompleteReadError as exc:
        raise TransportError(f"connection closed mid-frame ({len(exc.partial)} bytes read)") from None
    except asyncio.TimeoutError:
        raise TransportError(f"no complete frame within {timeout:.1f} s") from None
    try:
        header = json.loads(raw[:header_len])
    except ValueError as exc:
        raise TransportError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TransportError("frame header is not a JSON object")
    return header, raw[header_len:]


async def write_frame(writer: asyncio.StreamWriter, header: Header, payload: bytes, timeout: float) -> None:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    writer.write(_PREFIX.pack(MAGIC, len(encoded), len(payload)) + encoded)
    writer.write(payload)
    try:
        await asyncio.wait_for(writer.drain(), timeout)
    except asyncio.TimeoutError:
        raise TransportError(f"could not send {len(payload):,} bytes within {timeout:.1f} s") from None


def _peer_of(writer: asyncio.StreamWriter) -> Caller:
    tls = writer.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    cert = tls.getpeercert() if tls is not None else None
    if not der or not cert:
        raise AccessDenied("the caller presented no certificate")
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    if not names:
        raise AccessDenied("the caller's certificate has no common name")
    return Caller(str(names[0]), hashlib.sha256(der).hexdigest())


class Lane:
    """Accepts calls for ``handler`` and makes calls to other peers, both over mutual TLS."""

    def __init__(self, identity: PeerIdentity, handler: Handler, *, max_payload: int = 256 * 2**20,
                 timeout: float = 10.0) -> None:
        self.identity, self.handler = identity, handler
        self.max_payload, self.timeout = max_payload, timeout
        self._server_ctx = server_context(identity.tls)
        self._client_ctx = client_context(identity.tls)
        self._client_ctx.check_hostname = False  # the certificate fingerprint is checked instead
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self._server_ctx,
                                                  ssl_handshake_timeout=self.timeout)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            caller = _peer_of(writer)
            try:
                header, payload = await read_frame(reader, self.max_payload, self.timeout)
                reply = await self.handler(caller, header, payload)
            except PotluckError as exc:  # refused (too large, malformed, by the handler): say why
                reply = ({"ok": False, "error": str(exc)}, b"")
            await write_frame(writer, reply[0], reply[1], self.timeout)
        except (PotluckError, OSError, ssl.SSLError) as exc:
            log.debug("lane: dropped a connection: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def call(self, address: tuple[str, int], peer_id: str, fingerprint: str, header: Header,
                   payload: bytes = b"", *, timeout: float | None = None) -> tuple[Header, bytes]:
        """Send one request to ``peer_id`` at ``address``; its reply.

        AccessDenied when the certificate there is not ``fingerprint``; TransportError
        when it cannot be reached or does not answer within ``timeout`` (whole call);
        PeerRefused when it refuses the request.
        """
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._call(address, peer_id, fingerprint, header, payload, limit), limit)
        except asyncio.TimeoutError:
            raise TransportError(f"peer {peer_id} at {address[0]}:{address[1]}: no reply within {limit:.1f} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"peer {peer_id} at {address[0]}:{address[1]}: {exc}") from None

    async def _call(self, address: tuple[str, int], peer_id: str, fingerprint: str, header: Header,
                    payload: bytes, limit: float) -> tuple[Header, bytes]:
        reader, writer = await asyncio.open_connection(address[0], address[1], ssl=self._client_ctx,
                                                       server_hostname=peer_id)
        try:
            other = _peer_of(writer)
            if other.fingerprint != fingerprint or other.peer_id != peer_id:
                raise AccessDenied(f"{address[0]}:{address[1]} presented {other.peer_id!r}'s certificate "
                                   f"{other.fingerprint[:16]}…, not the one {peer_id!r} published")
            await write_frame(writer, header, payload, limit)
            reply, body = await read_frame(reader, self.max_payload, limit)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        if reply.get("ok") is False:
            raise PeerRefused(f"peer {peer_id} refused: {reply.get('error')}")
        return reply, body

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
