"""Hand-framed chunks against protobuf as the oracle."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.transport import frames
from potluck.transport.v1 import fleet_pb2 as pb

PARTS = [pb.InstructionPart, pb.ResultPart]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=600), st.sampled_from(PARTS))
def test_frames_are_the_bytes_protobuf_writes_and_read_back_as_views(offset, data, part_type):
    framed = frames.serialize(frames.ChunkFrame(offset, memoryview(data)))
    assert framed == part_type(chunk=pb.Chunk(offset=offset, data=data)).SerializeToString()
    parsed = frames.chunk_of(frames.parser(part_type)(framed))
    assert parsed is not None and parsed.offset == offset and bytes(parsed.data) == data
    via_protobuf = part_type.FromString(framed)
    assert via_protobuf.chunk.offset == offset and via_protobuf.chunk.data == data


def test_large_chunks_are_views_into_the_received_message():
    framed = frames.serialize(frames.ChunkFrame(3 << 20, b"\x07" * (2 << 20)))
    parsed = frames.parser(pb.ResultPart)(framed)
    assert isinstance(parsed.data, memoryview) and parsed.data.obj is framed


def test_headers_and_unusual_layouts_go_through_protobuf():
    header = pb.ResultPart(header=pb.ResultHeader(session="s", round=3, params_size=10))
    parsed = frames.parser(pb.ResultPart)(header.SerializeToString())
    assert isinstance(parsed, pb.ResultPart) and parsed.header.round == 3 and frames.chunk_of(parsed) is None
    # data before offset is legal protobuf that frames does not write: protobuf parses it
    reordered = b"\x12\x07" + b"\x12\x03abc" + b"\x08\x05"
    parsed = frames.parser(pb.ResultPart)(reordered)
    assert isinstance(parsed, pb.ResultPart)
    assert frames.chunk_of(parsed) == frames.ChunkFrame(5, b"abc")


@pytest.mark.parametrize("raw", [b"\x12", b"\x12\x05\x12\x09abc", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"])
def test_truncated_or_garbled_frames_are_protobuf_decode_errors(raw):
    with pytest.raises(DecodeError):
        frames.parser(pb.ResultPart)(raw)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_as_protobuf_would(raw):
    try:
        expected = pb.ResultPart.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            frames.parser(pb.ResultPart)(raw)
        return
    parsed = frames.parser(pb.ResultPart)(raw)
    chunk = frames.chunk_of(parsed)
    if expected.WhichOneof("part") == "chunk":
        assert chunk is not None
        assert (chunk.offset, bytes(chunk.data)) == (expected.chunk.offset, expected.chunk.data)
    else:
        assert chunk is None
