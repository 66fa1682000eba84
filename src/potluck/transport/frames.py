"""Chunk messages framed by hand, byte-for-byte what protobuf would write.

A ``Chunk`` inside an ``InstructionPart`` or ``ResultPart`` is two small varints around
megabytes of payload. protobuf copies those megabytes three times on the way out (into
the message, into the serialized string, after slicing them from the payload) and once
on the way in; here they are copied once when sending and read as a view when
receiving. Headers and anything unexpected go through protobuf itself, so a peer
using any protobuf implementation of ``fleet.proto`` interoperates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

_CHUNK_FIELD = 0x12  # field 2 (chunk / data), wire type 2 (length-delimited)
_OFFSET_FIELD = 0x08  # field 1 (offset), wire type 0 (varint)


@dataclass(frozen=True, slots=True)
class ChunkFrame:
    """One piece of a payload: where it starts and its bytes (often a view)."""

    offset: int
    data: bytes | memoryview


class _Message(Protocol):
    def SerializeToString(self) -> bytes: ...  # noqa: N802 (protobuf's name)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialize(message: ChunkFrame | _Message) -> bytes:
    """Wire bytes for a part: frames by hand, everything else by protobuf."""
    if not isinstance(message, ChunkFrame):
        return message.SerializeToString()
    size = len(message.data)
    # proto3 leaves out fields holding their default (0, empty), and so must we
    inner = (bytes([_OFFSET_FIELD]) + _varint(message.offset) if message.offset else b"") + (
        bytes([_CHUNK_FIELD]) + _varint(size) if size else b""
    )
    return b"".join((bytes([_CHUNK_FIELD]), _varint(len(inner) + size), inner, message.data))


def _read_varint(raw: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(raw))):
        value |= (raw[i] & 0x7F) << shift
        if raw[i] < 0x80:
            return value, i + 1
        shift += 7
    return None


def _chunk_view(raw: bytes) -> ChunkFrame | None:
    """The chunk in ``raw`` if it is laid out exactly as :func:`serialize` writes it."""
    if len(raw) < 2 or raw[0] != _CHUNK_FIELD:
        return None
    outer = _read_varint(raw, 1)
    if outer is None or outer[1] + outer[0] != len(raw):
        return None
    pos, offset = outer[1], 0
    if pos < len(raw) and raw[pos] == _OFFSET_FIELD:
        read = _read_varint(raw, pos + 1)
        if read is None:
            return None
        offset, pos = read
    if pos >= len(raw) or raw[pos] != _CHUNK_FIELD:
        return None
    data = _read_varint(raw, pos + 1)
    if data is None or data[1] + data[0] != len(raw):
        return None
    return ChunkFrame(offset, memoryview(raw)[data[1] :])


def parser(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer that returns a :class:`ChunkFrame` for chunk parts (a view, no
    copy) and ``message_type.FromString(raw)`` for everything else."""

    def parse(raw: bytes) -> Any:
        frame = _chunk_view(raw)
        return frame if frame is not None else message_type.FromString(raw)

    return parse


def chunk_of(part: Any) -> ChunkFrame | None:
    """The chunk a received part carries (framed or parsed by protobuf), or None for a header."""
    if isinstance(part, ChunkFrame):
        return part
    if part.WhichOneof("part") == "chunk":
        return ChunkFrame(part.chunk.offset, part.chunk.data)
    return None
