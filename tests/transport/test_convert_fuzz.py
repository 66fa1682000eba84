"""convert.py under hostile input: round trips through the wire, or WireError.

* every Scalar kind survives ``to_proto`` → bytes → ``from_proto`` with its type and
  value (sint64 bounds, NaN/Inf, any UTF-8 text);
* what the wire cannot carry (ints beyond sint64, lone surrogates, other types) is a
  WireError, never protobuf's ValueError / UnicodeEncodeError;
* arbitrary bytes parsed as the fleet messages either fail in protobuf's own
  ``DecodeError`` (gRPC's concern, before our code runs) or give messages that the
  ``from_proto`` functions turn into values or refuse with WireError.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.core.errors import ParamsError
from potluck.transport.convert import (
    SINT64_MAX,
    SINT64_MIN,
    WireError,
    config_from_proto,
    config_to_proto,
    metrics_from_proto,
    metrics_to_proto,
    scalar_from_proto,
    scalar_to_proto,
)
from potluck.transport.v1 import fleet_pb2 as pb

FUZZ = settings(max_examples=150, deadline=None, derandomize=True)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # any UTF-8 text
SCALARS = st.one_of(
    st.booleans(),
    st.integers(SINT64_MIN, SINT64_MAX),
    st.sampled_from([SINT64_MIN, SINT64_MAX, 0, -1, 2**53 + 1]),
    st.floats(),  # NaN and ±Inf included
    TEXT,
)


def same_scalar(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def through_the_wire(config: dict) -> dict:
    wire = pb.InstructionHeader(config=config_to_proto(config)).SerializeToString()
    return config_from_proto(pb.InstructionHeader.FromString(wire).config)


@FUZZ
@given(st.dictionaries(TEXT, SCALARS, max_size=6))
def test_every_scalar_kind_round_trips_with_its_type(config):
    back = through_the_wire(config)
    assert set(back) == set(config)
    assert all(same_scalar(back[k], config[k]) for k in config)


@pytest.mark.parametrize("value", [SINT64_MIN, SINT64_MAX, math.inf, -math.inf, math.nan, -0.0, 5e-324, "",
                                   "\x00", "é ü 🍲", "\U0010ffff", True, False])
def test_extreme_scalars_round_trip(value):
    back = through_the_wire({"k": value})["k"]
    assert same_scalar(back, value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, back) == -1  # the sign of -0.0 survives


# -- what the wire cannot carry ------------------------------------------------------------


@FUZZ
@given(st.one_of(st.integers(SINT64_MAX + 1, 2**200), st.integers(-(2**200), SINT64_MIN - 1),
                 st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**5000, -(10**5000)])))
def test_integers_beyond_sint64_are_a_wire_error(value):
    # Regression: protobuf raised ValueError("Value out of range") here.
    with pytest.raises(WireError, match="sint64"):
        scalar_to_proto(value)
    with pytest.raises(WireError, match="'big'"):
        config_to_proto({"big": value})


@pytest.mark.parametrize("text", ["\ud800", "a\udcffb", "\udfff"])
def test_text_that_is_not_utf8_is_a_wire_error(text):
    # Regression: protobuf raised UnicodeEncodeError for lone surrogates (e.g. argv bytes
    # decoded with surrogateescape), in values and in keys.
    with pytest.raises(WireError, match="UTF-8"):
        scalar_to_proto(text)
    with pytest.raises(WireError, match="UTF-8"):
        config_to_proto({text: 1})
    with pytest.raises(WireError, match="UTF-8"):
        metrics_to_proto({text: 1.0})


@FUZZ
@given(st.one_of(st.none(), st.binary(max_size=4), st.lists(st.integers(), max_size=2), st.complex_numbers(),
                 st.sampled_from([np.int64(3), np.float32(1.5), np.bool_(True), object(), b"x", 1j]),
                 st.integers(), st.floats(), st.text(max_size=5), st.booleans()))
def test_scalar_to_proto_gives_a_message_or_a_wire_error(value):
    try:
        message = scalar_to_proto(value)  # type: ignore[arg-type]
    except WireError:
        return
    assert same_scalar(scalar_from_proto(pb.Scalar.FromString(message.SerializeToString())), value)


@FUZZ
@given(st.dictionaries(st.one_of(TEXT, st.text(max_size=5), st.integers()),
                       st.one_of(st.floats(), st.integers(-(2**80), 2**80), st.booleans(), st.text(max_size=3),
                                 st.none()), max_size=5))
def test_metrics_to_proto_gives_a_map_or_a_wire_error(metrics):
    try:
        out = metrics_to_proto(metrics)  # type: ignore[arg-type]
    except WireError:
        return
    wire = pb.ResultHeader(metrics=out).SerializeToString()
    back = metrics_from_proto(pb.ResultHeader.FromString(wire).metrics)
    assert set(back) == {str(k) for k in metrics}
    assert all(same_scalar(back[k], float(v)) for k, v in metrics.items())


# -- arbitrary bytes from the wire -----------------------------------------------------------


def parse(message_type, data: bytes):
    """protobuf's own parse, as gRPC does it before any of our code runs."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        return None


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_instruction_headers_convert_or_raise_wire_error(data):
    header = parse(pb.InstructionHeader, data)
    if header is None:
        return
    try:
        config = config_from_proto(header.config)
    except WireError:
        return
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())
    again = through_the_wire(config)  # what we read, we can send
    assert set(again) == set(config) and all(same_scalar(again[k], config[k]) for k in config)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_result_headers_convert_or_raise_wire_error(data):
    header = parse(pb.ResultHeader, data)
    if header is None:
        return
    try:
        metrics = metrics_from_proto(header.metrics)
    except WireError:
        return
    assert all(isinstance(v, float) and 1 <= len(k) <= 128 for k, v in metrics.items())
    assert set(metrics_to_proto(metrics)) == set(metrics)


@FUZZ
@given(st.binary(max_size=100))
def test_arbitrary_scalars_convert_or_raise_wire_error(data):
    message = parse(pb.Scalar, data)
    if message is None:
        return
    try:
        value = scalar_from_proto(message)
    except WireError:
        assert message.WhichOneof("kind") is None
        return
    assert same_scalar(scalar_from_proto(scalar_to_proto(value)), value)


@FUZZ
@given(st.dictionaries(TEXT, st.one_of(
    st.builds(pb.Scalar),  # empty: no kind set
    st.builds(lambda v: pb.Scalar(bool_value=v), st.booleans()),
    st.builds(lambda v: pb.Scalar(int_value=v), st.integers(SINT64_MIN, SINT64_MAX)),
    st.builds(lambda v: pb.Scalar(float_value=v), st.floats()),
    st.builds(lambda v: pb.Scalar(string_value=v), TEXT),
), max_size=5))
def test_config_from_proto_names_the_empty_value(messages):
    try:
        config = config_from_proto(messages)
    except WireError as exc:
        assert "empty" in str(exc)
        empty = [k for k, m in messages.items() if m.WhichOneof("kind") is None]
        assert any(repr(k[:40]) in str(exc) for k in empty)
        return
    assert set(config) == set(messages)


def test_wire_error_is_a_params_error():
    assert issubclass(WireError, ParamsError)
