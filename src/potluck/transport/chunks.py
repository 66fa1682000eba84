"""Parameters as a stream of chunks: split on the sender, reassembled and checked on arrival.

gRPC caps one message's size (4 MiB by default), so a model travels as a header naming
its size and SHA-256, then chunks. Reassembly refuses a stream that announces more than
the configured limit, sends more or fewer bytes than announced, or whose digest does
not match, each with its own error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from potluck.core.errors import ParamsError

DEFAULT_CHUNK_BYTES = 2 * 2**20
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 2**30


class PayloadError(ParamsError):
    """A chunk stream is oversized, truncated, too long or corrupted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short code counted in metrics: oversize, truncated, overrun, digest


def split(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Zero-copy slices of ``data``, each at most ``chunk_bytes`` long."""
    view = memoryview(data)
    for start in range(0, len(data), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


class Reassembly:
    """Collects the chunks of one payload announced as ``size`` bytes with ``sha256``."""

    def __init__(self, size: int, sha256: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if size > max_bytes:
            raise PayloadError("oversize", f"payload of {size:,} bytes exceeds the limit of {max_bytes:,} bytes")
        self.size, self.sha256 = size, sha256
        self._buffer = bytearray()
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        if len(self._buffer) + len(chunk) > self.size:
            raise PayloadError("overrun", f"payload is longer than the announced {self.size:,} bytes")
        self._buffer += chunk
        self._hash.update(chunk)

    def finish(self) -> bytes:
        if len(self._buffer) != self.size:
            raise PayloadError("truncated", f"payload ended after {len(self._buffer):,} of {self.size:,} bytes")
        if self._hash.hexdigest() != self.sha256:
            raise PayloadError("digest", "payload does not match its SHA-256 digest")
        return bytes(self._buffer)
