"""Chunk reassembly under hostile streams: exactly the payload, or PayloadError.

The specification the tests check every stream against: a stream of ``(offset, data)``
chunks is accepted iff the announced size is within the limit, every offset given is
where the chunk really starts, the bytes add up to the announced size and their digest
(``payload_digest``) is the announced one; then ``finish()`` returns exactly those
bytes. Anything else raises :class:`PayloadError` (with a known reason), never another
exception.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.core.digests import payload_digest
from potluck.transport.chunks import PayloadError, Reassembly, split

FUZZ = settings(max_examples=150, deadline=None, derandomize=True)
REASONS = {"oversize", "truncated", "overrun", "duplicate", "out_of_order", "digest"}

Chunk = tuple[int | None, bytes]  # (offset the sender claims, or None for "next"; data)


def reassemble(size: int, digest: str, chunks: list[Chunk], max_bytes: int = 2**20) -> bytes:
    """The one place that drives the Reassembly API (adapt here if it changes)."""
    assembly = Reassembly(size, digest, max_bytes)
    for offset, data in chunks:
        assembly.add(data, offset)
    return bytes(assembly.finish())


def sha(data: bytes) -> str:
    """The digest a stream announces (whatever hash chunks.py uses)."""
    return payload_digest(data)


def should_accept(size: int, digest: str, chunks: list[Chunk], max_bytes: int = 2**20) -> bool:
    position = 0
    for offset, data in chunks:
        if offset is not None and offset != position:
            return False
        position += len(data)
    joined = b"".join(data for _, data in chunks)
    return size <= max_bytes and len(joined) == size and sha(joined) == digest


def check(size: int, digest: str, chunks: list[Chunk], max_bytes: int = 2**20) -> PayloadError | None:
    """Run a stream against the specification; returns the refusal, if any."""
    try:
        out = reassemble(size, digest, chunks, max_bytes)
    except PayloadError as exc:
        assert exc.reason in REASONS
        assert not should_accept(size, digest, chunks, max_bytes), f"refused a valid stream: {exc}"
        return exc
    assert should_accept(size, digest, chunks, max_bytes), "accepted a stream that is not the payload"
    assert out == b"".join(data for _, data in chunks) and len(out) == size and sha(out) == digest
    return None


@st.composite
def chunkings(draw, max_size: int = 600) -> tuple[bytes, list[Chunk]]:
    """A payload and a random (possibly uneven, possibly empty-chunked) split of it."""
    payload = draw(st.binary(max_size=max_size))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=8)))
    bounds = [0, *cuts, len(payload)]
    with_offsets = draw(st.booleans())
    chunks = [(start if with_offsets else None, payload[start:end]) for start, end in zip(bounds, bounds[1:])]
    return payload, chunks


@FUZZ
@given(chunkings())
def test_any_chunking_reassembles_to_exactly_the_payload(case):
    payload, chunks = case
    assert reassemble(len(payload), sha(payload), chunks) == payload


@FUZZ
@given(st.binary(max_size=3000), st.integers(1, 1100))
def test_split_then_reassemble_is_the_identity(payload, chunk_bytes):
    chunks = list(split(payload, chunk_bytes))
    assert all(0 < len(data) <= chunk_bytes for _, data in chunks)
    assert reassemble(len(payload), sha(payload), chunks) == payload


@st.composite
def hostile_streams(draw):
    payload, chunks = draw(chunkings(max_size=300))
    size, digest = len(payload), sha(payload)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["duplicate", "drop", "swap", "truncate", "extra", "offset", "flip",
                                   "digest", "size", "none"]))
        i = draw(st.integers(0, len(chunks) - 1)) if chunks else None
        if op == "duplicate" and i is not None:
            chunks.insert(i + draw(st.integers(0, 1)), chunks[i])
        elif op == "drop" and i is not None:
            del chunks[i]
        elif op == "swap" and len(chunks) >= 2:
            j = draw(st.integers(0, len(chunks) - 1))
            chunks[i], chunks[j] = chunks[j], chunks[i]
        elif op == "truncate" and i is not None:
            offset, data = chunks[i]
            chunks[i] = (offset, data[: draw(st.integers(0, max(0, len(data) - 1)))])
        elif op == "extra":
            at = draw(st.sampled_from([None, size, 0, size + 1]))
            chunks.append((at, draw(st.binary(min_size=1, max_size=20))))
        elif op == "offset" and i is not None:
            chunks[i] = (draw(st.integers(0, 2 * size + 2) | st.sampled_from([-1, 2**64])), chunks[i][1])
        elif op == "flip" and i is not None and chunks[i][1]:
            offset, data = chunks[i]
            pos = draw(st.integers(0, len(data) - 1))
            chunks[i] = (offset, data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :])
        elif op == "digest":
            digest = draw(st.sampled_from([sha(payload + b"x"), digest.upper(), "", "0" * 64, digest[:-1]]))
        elif op == "size":
            size = draw(st.sampled_from([size - 1, size + 1, 0, -1, 2**20 + 1, 2**64]))
    return size, digest, chunks


@settings(FUZZ, max_examples=400)
@given(hostile_streams())
def test_hostile_streams_are_refused_with_payload_error_or_are_exactly_the_payload(stream):
    check(*stream)


@FUZZ
@given(st.integers(-(2**70), 2**70), st.text(max_size=70),
       st.lists(st.tuples(st.none() | st.integers(-(2**64), 2**64), st.binary(max_size=12)), max_size=6),
       st.integers(0, 64))
def test_arbitrary_announcements_and_chunks(size, digest, chunks, max_bytes):
    check(size, digest, chunks, max_bytes)


# -- each kind of fault, with its own reason ---------------------------------------------------


def stream(n: int = 5, width: int = 10) -> tuple[bytes, list[Chunk]]:
    payload = bytes(range(n * width))
    return payload, [(i * width, payload[i * width : (i + 1) * width]) for i in range(n)]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: c[:2] + c[1:], "duplicate"),  # a resent chunk
        (lambda c: c[:1] + c[2:], "out_of_order"),  # a lost chunk
        (lambda c: c[1:2] + c[:1] + c[2:], "out_of_order"),  # two swapped
        (lambda c: c[:-1], "truncated"),  # the stream ends early
        (lambda c: [*c, (50, b"x")], "overrun"),  # one more chunk than announced
        (lambda c: [(o, d[::-1]) for o, d in c], "digest"),  # same length, other bytes
    ],
    ids=["duplicate", "dropped", "swapped", "truncated", "extra", "corrupted"],
)
def test_each_fault_is_refused_with_its_reason(mutate, reason):
    payload, chunks = stream()
    error = check(len(payload), sha(payload), mutate(chunks))
    assert error is not None and error.reason == reason


def test_oversize_is_refused_before_any_chunk():
    with pytest.raises(PayloadError) as info:
        Reassembly(2**20 + 1, "0" * 64, 2**20)
    assert info.value.reason == "oversize"


def test_finish_twice_never_returns_other_bytes():
    payload, chunks = stream()
    assembly = Reassembly(len(payload), sha(payload))
    for offset, data in chunks:
        assembly.add(data, offset)  # (drives the API directly: it calls finish twice)
    assert assembly.finish() == payload
    try:
        again = assembly.finish()
    except PayloadError:
        return
    assert again == payload
