"""Parameters as a stream of chunks: split on the sender, reassembled and checked on arrival.

gRPC caps one message's size (4 MiB by default), so a model travels as a header naming
its size and BLAKE3 digest, then chunks. Reassembly refuses a stream that announces more than
the configured limit, sends more or fewer bytes than announced, or whose digest does
not match, each with its own error.
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3

from potluck.core.errors import ConfigError, ParamsError

DEFAULT_CHUNK_BYTES = 2 * 2**20
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 2**30



class PayloadError(ParamsError):
    """A chunk stream is oversized, truncated, too long or corrupted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # counted in metrics: oversize, truncated, overrun, duplicate, out_of_order, digest


def split(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, memoryview]]:
    """``(offset, piece)`` pairs covering ``data``: views, each at most ``chunk_bytes`` long."""
    if chunk_bytes <= 0:
        raise ConfigError(f"chunk size must be positive, got {chunk_bytes}")
    view = memoryview(data)
    for start in range(0, len(data), chunk_bytes):
        yield start, view[start : start + chunk_bytes]


class Reassembly:
    """Collects the chunks of one payload announced as ``size`` bytes with ``digest``.

    Each chunk names the byte offset it starts at, so a duplicated or reordered chunk
    is refused as such rather than found later as a digest mismatch.
    """

    def __init__(self, size: int, digest: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if size > max_bytes:
            raise PayloadError("oversize", f"payload of {size:,} bytes exceeds the limit of {max_bytes:,} bytes")
        self.size, self.digest = size, digest
        self._chunks: list[bytes | memoryview] = []  # joined once at the end: one allocation, one copy
        self._received = 0
        self._finished = False
        self._hash = blake3.blake3()

    def add(self, chunk: bytes | memoryview, offset: int | None = None) -> None:
        """Append ``chunk``; ``offset`` (where it starts in the payload) defaults to "next"."""
        if offset is not None and offset != self._received:
            if offset < self._received:
                raise PayloadError("duplicate", f"chunk at byte {offset:,} repeats bytes already received "
                                                f"(next expected: {self._received:,})")
            raise PayloadError("out_of_order", f"chunk at byte {offset:,} arrived before the bytes at "
                                               f"{self._received:,}")
        if self._received + len(chunk) > self.size:
            raise PayloadError("overrun", f"payload is longer than the announced {self.size:,} bytes")
        self._chunks.append(chunk)
        self._received += len(chunk)
        self._hash.update(chunk)

    def finish(self) -> bytes:
        if self._finished:
            raise PayloadError("finished", "this payload was already reassembled")
        if self._received != self.size:
            raise PayloadError("truncated", f"payload ended after {self._received:,} of {self.size:,} bytes")
        if self._hash.hexdigest() != self.digest:
            raise PayloadError("digest", "payload does not match its BLAKE3 digest")
        only = self._chunks[0] if len(self._chunks) == 1 else None
        payload = only if isinstance(only, bytes) else b"".join(self._chunks)
        self._chunks, self._finished = [], True
        return payload
