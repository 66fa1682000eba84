"""Params.decode under hostile input: only ParamsError, never more lenient than safetensors.

Three properties, each with a small fixed budget (derandomized, so a run is repeatable):

* round trip: ``decode(encode(p)) == p`` with identical arrays, schema, order and kind,
  and ``encode`` is deterministic;
* arbitrary and mutated bytes (bit flips, truncation, extension, header length, header
  JSON edits) make ``decode`` raise :class:`ParamsError` or nothing;
* oracle: whatever ``decode`` accepts, ``safetensors.numpy.load`` accepts too and reads
  as the same arrays (dtype, shape and bytes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load as lib_load
from safetensors.numpy import save as lib_save

from potluck.core.errors import ParamsError
from potluck.core.params import Params, ParamsKind

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
          np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]
NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda n: n != "__metadata__")
# Every dtype tag the format knows (most of them numpy cannot hold), plus garbage.
TAGS = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64", "C64",
        "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "E8M0", "f32", "", "NOPE"]
HUGE = [2**31, 2**32, 2**62, 2**63, 2**64, 2**70, 10**30]


@st.composite
def params(draw, max_arrays: int = 4) -> Params:
    names = draw(st.lists(NAMES, max_size=max_arrays, unique=True))
    arrays = {}
    for name in names:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        arrays[name] = draw(hnp.arrays(draw(st.sampled_from(DTYPES)), shape))
    return Params.from_arrays(arrays, draw(st.sampled_from(list(ParamsKind))))


def same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (np.array_equal, but NaN payloads count too)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def decode_or_refuse(data: bytes) -> Params | None:
    """The rule: ParamsError or a Params the library reads the same way. Anything else
    (another exception) propagates and fails the test with its traceback."""
    try:
        p = Params.decode(data)
    except ParamsError:
        return None
    lib = lib_load(data)  # must not raise: decode is never more lenient than the library
    assert sorted(lib) == sorted(p)
    for name in p:
        assert same_arrays(p[name], lib[name]), name
    again = Params.decode(p.encode())
    assert again == p and again.schema == p.schema and again.kind is p.kind
    return p


def split_file(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_file(header: dict | str, body: bytes, pad: int = 0) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass")
    text += b" " * pad
    return len(text).to_bytes(8, "little") + text + body


# -- round trip ---------------------------------------------------------------------------


@FUZZ
@given(params())
def test_decode_inverts_encode_and_encode_is_deterministic(p):
    data = p.encode()
    q = Params.decode(data)
    assert list(q) == list(p) and q.schema == p.schema and q.kind is p.kind
    for name in p:
        assert same_arrays(q[name], p[name])
    assert q == p and q.digest == p.digest
    # Deterministic: the same arrays, built again from copies, give the same bytes.
    copy = Params.from_arrays({n: np.array(a) for n, a in p.items()}, p.kind)
    assert copy.encode() == data == p.encode() == q.encode()
    # Oracle: the library reads our bytes as the same arrays.
    lib = lib_load(data)
    assert sorted(lib) == sorted(p) and all(same_arrays(lib[n], p[n]) for n in p)


@FUZZ
@given(params())
def test_files_written_by_the_library_decode_to_the_same_arrays(p):
    data = lib_save(dict(p.items()))
    q = decode_or_refuse(data)
    assert q is not None
    assert list(q) == sorted(p) and q.kind is ParamsKind.FULL  # no potluck metadata: sorted, full
    assert all(same_arrays(q[n], p[n]) for n in p)


# -- arbitrary and mutated bytes ------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_with_params_error(data):
    decode_or_refuse(data)


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=64))
def test_arbitrary_headers_with_a_matching_length_field(header, body):
    decode_or_refuse(len(header).to_bytes(8, "little") + header + body)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(params(max_arrays=3)).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete", "length"]))
        if op == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            pos = draw(st.integers(0, len(data) - 1))
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "length" and len(data) >= 8:
            n = int.from_bytes(data[:8], "little")
            new = draw(st.one_of(st.integers(max(-16, -n), 16).map(n.__add__),
                                 st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63, 2**64 - 1])))
            data[:8] = new.to_bytes(8, "little")
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_encodings_are_refused_or_read_as_the_library_reads_them(data):
    decode_or_refuse(data)


# Structured edits of a valid header: what a careless or hostile writer could produce.
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
SHAPES = st.one_of(
    st.lists(st.integers(0, 5), max_size=4),
    st.lists(st.integers(-3, 5) | st.sampled_from(HUGE), min_size=1, max_size=4),
    st.lists(st.sampled_from([0, 1]), min_size=60, max_size=70),  # around numpy's 64 dims
    JSONISH,
)
OFFSETS = st.one_of(
    st.lists(st.integers(-4, 64), min_size=2, max_size=2),
    st.lists(st.integers(0, 64) | st.sampled_from(HUGE), min_size=0, max_size=3),
    JSONISH,
)
POTLUCK_META = st.one_of(
    st.sampled_from(['{"kind": "delta"}', '{"kind": "nope"}', '{"kind": 1}', '{"kind": null}', '{"kind": []}',
                     '{"order": []}', '{"order": null}', '{"order": "a"}', '{"order": [1, 2]}', "[]", "1",
                     '"full"', "{", "", "NaN", '{"kind": NaN}', "[" * 5000, '{"kind": ' + "9" * 5000 + "}"]),
    JSONISH.map(json.dumps),
    st.text(max_size=20),
)


@st.composite
def edited_header(draw) -> bytes:
    p = draw(params(max_arrays=3))
    header, body = split_file(p.encode())
    names = [n for n in header if n != "__metadata__"]
    duplicate = None
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dtype", "shape", "offsets", "field", "drop", "rename", "entry", "meta",
                                   "potluck", "order", "duplicate", "body"]))
        target = draw(st.sampled_from(names)) if names else None
        info = header.get(target) if target is not None else None
        if op == "dtype" and isinstance(info, dict):
            info["dtype"] = draw(st.sampled_from(TAGS) | JSONISH)
        elif op == "shape" and isinstance(info, dict):
            info["shape"] = draw(SHAPES)
        elif op == "offsets" and isinstance(info, dict):
            info["data_offsets"] = draw(OFFSETS)
        elif op == "field" and isinstance(info, dict):
            info[draw(st.sampled_from(["extra", "dtype ", "offsets"]))] = draw(JSONISH)
        elif op == "drop" and target is not None:
            del header[target]
            names.remove(target)
        elif op == "rename" and target is not None:
            new = draw(st.sampled_from(["", "__metadata__", "a", "\x00", "é", " "]) | NAMES)
            header[new] = header.pop(target)
            names = [n for n in header if n != "__metadata__"]
        elif op == "entry":
            header[draw(NAMES)] = draw(JSONISH)
            names = [n for n in header if n != "__metadata__"]
        elif op == "meta":
            header["__metadata__"] = draw(JSONISH)
        elif op == "potluck":
            meta = header.setdefault("__metadata__", {})
            if isinstance(meta, dict):
                meta[draw(st.sampled_from(["potluck", "other"]))] = draw(POTLUCK_META)
        elif op == "order":
            wrong = draw(st.lists(st.sampled_from([*names, "x", ""]) if names else st.just("x"), max_size=4))
            header["__metadata__"] = {"potluck": json.dumps({"kind": "full", "order": wrong})}
        elif op == "duplicate" and target is not None:
            duplicate = target
        elif op == "body":
            body = draw(st.sampled_from([body[:-1], body + b"\0", b"", body[1:] + body[:1]]))
    text = json.dumps(header)
    if duplicate is not None:  # a JSON object naming one tensor twice: only text can say that
        entry = json.dumps({duplicate: header.get(duplicate)})[1:-1]
        text = text[:-1] + ", " + entry + "}"
    return join_file(text, body, pad=draw(st.sampled_from([0, 0, 1, 7])))


@settings(FUZZ, max_examples=300)
@given(edited_header())
def test_edited_headers_are_refused_or_read_as_the_library_reads_them(data):
    decode_or_refuse(data)


# -- crashes found by the fuzzing, kept as examples --------------------------------------------

_ZERO_SIZE = {"dtype": "F32", "data_offsets": [0, 0]}


# Found by the atheris harness (benchmarks/fuzz) within a second: safetensors_format.decode
# checks that a shape's product fits the byte range, but numpy's reshape still refuses
# shapes of zero-size (or one-element) tensors with more than 64 dims or an extent past
# 2**63 / an overflowing product, and its ValueError escapes. Now refused with ParamsError.
@pytest.mark.parametrize(
    "header",
    [
        {"w": {**_ZERO_SIZE, "shape": [2**63, 0]}},  # numpy: "Maximum allowed dimension exceeded"
        {"w": {**_ZERO_SIZE, "shape": [2**62, 0]}},  # numpy: "array is too big"
        {"w": {**_ZERO_SIZE, "shape": [2**40, 2**40, 0]}},  # numpy: "cannot reshape array of size 0"
        {"w": {**_ZERO_SIZE, "shape": [0] * 65}},  # numpy: "maximum supported dimension ... is 64"
        {"w": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}},  # the same with one element
    ],
    ids=["dim-2**63", "dim-2**62", "product-overflow", "65-dims", "65-dims-one-element"],
)
def test_tensors_with_shapes_numpy_cannot_hold_are_refused(header):
    body = b"\0" * header["w"]["data_offsets"][1]
    decode_or_refuse(join_file(header, body))


# Found by the atheris harness: Python's json reads "-0" as the integer 0, the library's
# JSON parser as the float -0.0, which it refuses as a size; so decode accepts files the
# library refuses (it should never be more lenient). Now refused.
@pytest.mark.parametrize("header", ['{"w":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}',
                                    '{"w":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'],
                         ids=["offset", "shape"])
def test_minus_zero_is_refused_as_the_library_refuses_it(header):
    data = join_file(header, b"\0" * 4 if "4]" in header else b"")
    with pytest.raises(ParamsError):
        Params.decode(data)
