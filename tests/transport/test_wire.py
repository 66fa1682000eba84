"""Conversions and chunk streams: round trips and every way a stream can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from potluck.core.digests import payload_digest
from potluck.core.params import Params
from potluck.transport.chunks import PayloadError, Reassembly, split
from potluck.transport.convert import WireError, config_from_proto, config_to_proto, scalar_from_proto
from potluck.transport.v1 import fleet_pb2 as pb

scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20)
)


@given(st.dictionaries(st.text(min_size=1, max_size=10), scalars, max_size=6))
def test_config_round_trip_keeps_values_and_types(config):
    wire = pb.InstructionHeader(config=config_to_proto(config)).SerializeToString()
    back = config_from_proto(pb.InstructionHeader.FromString(wire).config)
    assert back == config
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in config.items()}


def test_unsupported_and_empty_scalars_are_refused():
    with pytest.raises(WireError, match="must be bool, int, float or str"):
        config_to_proto({"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(WireError, match="empty"):
        scalar_from_proto(pb.Scalar())


def payload(size: int = 3_000_000) -> tuple[bytes, str]:
    data = Params.from_arrays({"w": np.arange(size // 4, dtype=np.float32)}).encode()
    return data, payload_digest(data)


def test_chunks_reassemble_to_the_same_params():
    data, digest = payload()
    parts = list(split(data, 1 << 20))
    assert len(parts) == -(-len(data) // (1 << 20)) and all(len(p) <= 1 << 20 for _, p in parts)
    assert [offset for offset, _ in parts] == list(range(0, len(data), 1 << 20))
    r = Reassembly(len(data), digest)
    for offset, part in parts:
        r.add(part, offset)
    assert Params.decode(r.finish()).digest == Params.decode(data).digest


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda parts: parts[:-1], "truncated"),
        (lambda parts: parts + [(None, parts[-1][1])], "overrun"),  # an unnumbered extra piece
        (lambda parts: parts[:2] + parts[1:], "duplicate"),
        (lambda parts: parts[1:2] + parts[:1] + parts[2:], "out_of_order"),
        (lambda parts: [(o, p) for o, p in parts[1:2] + parts[:1] + parts[2:]], "out_of_order"),
        (lambda parts: [(None, p) for _, p in parts[1:2] + parts[:1] + parts[2:]], "digest"),  # unnumbered
        (lambda parts: [(0, bytes(parts[0][1][:-1]) + b"\x00")] + parts[1:], "digest"),  # one byte flipped
    ],
)
def test_bad_streams_are_refused_with_their_reason(mutate, reason):
    data, digest = payload()
    r = Reassembly(len(data), digest)
    with pytest.raises(PayloadError) as info:
        for offset, part in mutate(list(split(data, 1 << 20))):
            r.add(part, offset)
        r.finish()
    assert info.value.reason == reason


def test_oversize_announcement_is_refused_before_any_byte():
    with pytest.raises(PayloadError, match="exceeds the limit of 1,024 bytes") as info:
        Reassembly(10_000, "0" * 64, max_bytes=1024)
    assert info.value.reason == "oversize"
