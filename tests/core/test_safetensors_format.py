"""The safetensors codec against the safetensors library as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as lib_load
from safetensors.numpy import save as lib_save

from potluck.core import safetensors_format as fmt
from potluck.core.errors import ParamsError

DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32, np.float32,
          np.float64, np.int64, np.uint64]


@st.composite
def array_dicts(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=6).filter(lambda n: n != fmt.METADATA_KEY),
                          min_size=0, max_size=5, unique=True))
    out = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert a[name].tobytes() == b[name].tobytes()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(array_dicts(), st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=1)))
def test_encoding_is_byte_identical_to_the_library(arrays, metadata):
    # (one metadata key at most: the library writes several in an unspecified order)
    ours = fmt.encode(arrays, metadata)
    assert ours == lib_save(arrays, metadata=metadata or None)
    decoded, meta = fmt.decode(ours)
    assert_same(decoded, arrays)
    assert meta == (metadata or {})
    assert_same(lib_load(ours), arrays)


def test_big_endian_and_strided_arrays_are_stored_little_endian_and_dense():
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    strided = np.arange(12, dtype=np.int64)[::2]
    decoded, _ = fmt.decode(fmt.encode({"big": big, "strided": strided}))
    assert decoded["big"].dtype == np.dtype("<f4") and np.array_equal(decoded["big"], big)
    assert np.array_equal(decoded["strided"], strided)


def test_decoded_arrays_are_read_only_views_of_the_buffer():
    data = fmt.encode({"w": np.arange(1000, dtype=np.float32)})
    decoded, _ = fmt.decode(data)
    assert not decoded["w"].flags.writeable
    assert np.shares_memory(decoded["w"], np.frombuffer(data, np.uint8))


def test_unsupported_dtype_is_refused_by_name():
    with pytest.raises(ParamsError, match="complex64"):
        fmt.encode({"z": np.zeros(2, np.complex64)})


def _file(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x02", "too few"),
        ((10**9).to_bytes(8, "little"), "exceeds the limit"),
        ((64).to_bytes(8, "little") + b"{}", "runs past the end"),
        ((2).to_bytes(8, "little") + b"\xff\xfe", "not UTF-8"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
        ((3).to_bytes(8, "little") + b"{x}", "not valid JSON"),
        ((14).to_bytes(8, "little") + b'{"a":1, "a":2}', "names 'a' twice"),
        (_file({"w": {**W, "dtype": "BF16"}}, bytes(8)), "numpy cannot hold"),
        (_file({"w": {**W, "shape": [-1]}}, bytes(8)), "non-negative integers"),
        (_file({"w": {**W, "shape": [True, 2]}}, bytes(8)), "non-negative integers"),
        (_file({"w": {**W, "data_offsets": [8, 0]}}, bytes(8)), "before it begins"),
        (_file({"w": {**W, "data_offsets": [0, 4]}}, bytes(4)), "needs 8 bytes"),
        (_file({"w": W}, bytes(4)), "past the 4 data bytes"),
        (_file({"w": W}, bytes(12)), "4 data bytes after"),
        (_file({"w": {**W, "data_offsets": [4, 12]}}, bytes(12)), "leaves a gap"),
        (_file({"w": W, "v": W}, bytes(16)), "overlaps"),
        (_file({"w": {**W, "extra": 1}}, bytes(8)), "exactly dtype"),
        (_file({"__metadata__": {"k": 1}, "w": W}, bytes(8)), "map names to strings"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(ParamsError, match=reason):
        fmt.decode(data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(array_dicts(), st.data())
def test_mutated_files_are_refused_or_read_as_the_library_reads_them(arrays, data):
    blob = bytearray(fmt.encode(arrays, {"k": "v"}))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        ours, _ = fmt.decode(bytes(blob))
    except ParamsError:
        return
    assert_same(ours, lib_load(bytes(blob)))  # never more lenient than the library


@settings(max_examples=50, deadline=None, derandomize=True)
@given(array_dicts())
def test_encoded_size_is_the_length_of_the_encoding(arrays):
    assert fmt.encoded_size(arrays, {"k": "v"}) == len(fmt.encode(arrays, {"k": "v"}))
