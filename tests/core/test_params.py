"""Params: encoding round trips, digests, immutability, schema checks, hostile bytes."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save as st_save

from potluck.core.errors import NonFiniteError, ParamsError, SchemaMismatch
from potluck.core.params import Params, ParamsKind, schema_digest


def mixed_arrays() -> dict[str, np.ndarray]:
    """Names deliberately out of alphabetical order, five dtypes, a 0-d array."""
    rng = np.random.default_rng(7)
    return {
        "zeta.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "alpha": rng.standard_normal(5),  # float64
        "mid.count": np.array(42, np.int64),  # 0-d
        "b.half": rng.standard_normal((2, 1, 3)).astype(np.float16),
        "a.bytes": rng.integers(0, 256, size=(7,), dtype=np.uint8),
    }


def raw_safetensors(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


# -- round trip -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ParamsKind))
def test_encode_decode_round_trip_keeps_names_order_dtypes_shapes_and_kind(kind):
    source = mixed_arrays()
    p = Params.from_arrays(source, kind)
    q = Params.decode(p.encode())

    assert list(q) == ["zeta.weight", "alpha", "mid.count", "b.half", "a.bytes"]
    assert q.kind is kind
    for name, arr in source.items():
        assert q[name].dtype == arr.dtype, name
        assert q[name].shape == arr.shape, name
        np.testing.assert_array_equal(q[name], arr)
    assert q["mid.count"].shape == ()
    assert q.schema == p.schema
    assert q == p and q.digest == p.digest


def test_decode_accepts_bytearray_and_memoryview():
    p = Params.from_arrays(mixed_arrays())
    data = p.encode()
    assert Params.decode(bytearray(data)) == p
    assert Params.decode(memoryview(data)) == p


def test_decode_views_an_owned_read_only_array_and_copies_anything_writable():
    p = Params.from_arrays({"w": np.arange(1000, dtype=np.float32)})
    owned = np.frombuffer(p.encode(), np.uint8).copy()  # as the bulk lane receives: its own memory
    owned.setflags(write=False)
    viewed = Params.decode(memoryview(owned))
    assert np.shares_memory(viewed["w"], owned) and not viewed["w"].flags.writeable
    assert viewed == p and viewed.encode() == p.encode() and viewed.digest == p.digest
    writable = bytearray(p.encode())
    for data in (memoryview(writable), memoryview(writable).toreadonly(), memoryview(owned.view()), writable):
        copied = Params.decode(data)  # the writer could change these later: copied
        assert copied == p and not np.shares_memory(copied["w"], np.frombuffer(writable, np.uint8))


def test_empty_params_round_trip():
    p = Params.from_arrays({})
    q = Params.decode(p.encode())
    assert len(q) == 0 and q == p and q.num_values == 0


def test_with_kind_changes_kind_and_digest_but_not_arrays():
    p = Params.from_arrays(mixed_arrays())
    d = p.with_kind(ParamsKind.DELTA)
    assert d.kind is ParamsKind.DELTA and p.kind is ParamsKind.FULL
    assert d.digest != p.digest
    assert Params.decode(d.encode()).kind is ParamsKind.DELTA


def test_sizes_match_numpy():
    source = mixed_arrays()
    p = Params.from_arrays(source)
    assert p.num_values == sum(a.size for a in source.values())
    assert p.nbytes == sum(a.nbytes for a in source.values())
    delta = p.with_kind(ParamsKind.DELTA)
    assert p.encoded_size == len(p.encode()) and delta.encoded_size == len(delta.encode())


# -- digest ---------------------------------------------------------------------


def test_digest_is_stable_for_equal_arrays():
    # Encode many times: the digest must not depend on anything but the arrays
    # (safetensors' own metadata map has no fixed order).
    digests = {Params.from_arrays(mixed_arrays()).digest for _ in range(30)}
    assert len(digests) == 1
    (digest,) = digests
    p = Params.from_arrays(mixed_arrays())
    assert digest == hashlib.sha256(p.encode()).hexdigest()
    assert Params.from_arrays(mixed_arrays()).encode() == p.encode()
    assert hash(p) == hash(Params.from_arrays(mixed_arrays()))


@pytest.mark.parametrize("name", ["zeta.weight", "alpha", "b.half"])
def test_digest_changes_when_one_value_moves_one_ulp(name):
    source = mixed_arrays()
    before = Params.from_arrays(source)
    flat = source[name].reshape(-1)
    flat[0] = np.nextafter(flat[0], np.inf, dtype=flat.dtype)
    after = Params.from_arrays(source)
    assert after[name].reshape(-1)[0] != before[name].reshape(-1)[0]
    assert after.digest != before.digest
    assert after != before


def test_digest_depends_on_order_and_names():
    a = {"x": np.zeros(2, np.float32), "y": np.ones(2, np.float32)}
    p = Params.from_arrays(a)
    assert Params.from_arrays({"y": a["y"], "x": a["x"]}).digest != p.digest
    assert Params.from_arrays({"x": a["x"], "y2": a["y"]}).digest != p.digest


# -- immutability and construction ------------------------------------------------


def test_from_arrays_copies_the_callers_arrays():
    source = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    p = Params.from_arrays(source)
    digest = p.digest
    source["w"][0, 0] = 99.0
    assert p["w"][0, 0] == 0.0
    assert Params.from_arrays({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}).digest == digest


def test_arrays_are_read_only():
    p = Params.from_arrays(mixed_arrays())
    for name in p:
        assert not p[name].flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            p[name][...] = 0


def test_decoded_arrays_are_read_only():
    q = Params.decode(Params.from_arrays(mixed_arrays()).encode())
    with pytest.raises(ValueError, match="read-only"):
        q["zeta.weight"][0, 0] = 1.0


def test_non_contiguous_input_is_stored_contiguous():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    p = Params.from_arrays({"t": base.T, "f": np.asfortranarray(base)})
    assert p["t"].flags.c_contiguous and p["f"].flags.c_contiguous
    np.testing.assert_array_equal(Params.decode(p.encode())["t"], base.T)


def test_direct_constructor_raises_type_error():
    with pytest.raises(TypeError, match="from_arrays"):
        Params({"w": np.zeros(1)}, ParamsKind.FULL)


@pytest.mark.parametrize("name", ["", 3, None])
def test_bad_names_are_rejected(name):
    with pytest.raises(ParamsError, match="non-empty strings"):
        Params.from_arrays({name: np.zeros(1)})


@pytest.mark.parametrize("value", [np.array(["a"]), np.array([1 + 2j]), np.array([object()])])
def test_unsupported_dtypes_are_rejected(value):
    with pytest.raises(ParamsError, match="'w' has unsupported dtype"):
        Params.from_arrays({"w": value})


# -- decoding bad bytes -------------------------------------------------------------


def _valid_bytes() -> bytes:
    return Params.from_arrays(mixed_arrays()).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"not safetensors at all",
        b"\xff" * 8 + b"{}",  # header length far beyond the data
        struct.pack("<Q", 2) + b"[]",  # header is not an object
        struct.pack("<Q", 4) + b"{\x80\x81}",  # not UTF-8 / JSON
    ],
    ids=["empty", "one-byte", "text", "huge-header-length", "list-header", "bad-json"],
)
def test_garbage_bytes_raise_params_error(data):
    with pytest.raises(ParamsError, match="cannot decode"):
        Params.decode(data)


@pytest.mark.parametrize("cut", [1, 7, 8, 20, -1, -8])
def test_truncated_bytes_raise_params_error(cut):
    data = _valid_bytes()
    with pytest.raises(ParamsError):
        Params.decode(data[:cut])


def potluck_metadata(**fields: object) -> dict[str, str]:
    """The metadata potluck writes: one key holding a JSON object (see Params.encode)."""
    return {"potluck": json.dumps(fields)}


def test_encoding_carries_kind_and_order_in_metadata():
    p = Params.from_arrays({"b": np.zeros(1), "a": np.zeros(1)}, ParamsKind.DELTA)
    data = p.encode()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert json.loads(header["__metadata__"]["potluck"]) == {"kind": "delta", "order": ["b", "a"]}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (potluck_metadata(kind="weights"), "unknown kind 'weights'"),
        (potluck_metadata(kind=["full"]), "unknown kind"),
        ({"potluck": "not json"}, "bad 'potluck' metadata"),
        ({"potluck": "[1, 2]"}, "not an object"),
        (potluck_metadata(order=["a"]), "does not list the stored arrays"),
        (potluck_metadata(order=["a", "b", "c"]), "does not list the stored arrays"),
        (potluck_metadata(order=["a", "a"]), "does not list the stored arrays"),
        (potluck_metadata(order={"a": 1, "b": 2}), "does not list the stored arrays"),
        (potluck_metadata(order="ab"), "does not list the stored arrays"),
    ],
)
def test_bad_metadata_raises_params_error(metadata, message):
    data = st_save({"a": np.zeros(2, np.float32), "b": np.ones(3, np.int64)}, metadata=metadata)
    with pytest.raises(ParamsError, match=message):
        Params.decode(data)


def test_metadata_order_and_kind_are_honoured_from_foreign_writers():
    data = st_save({"a": np.zeros(2, np.float32), "b": np.ones(3, np.int64)},
                   metadata={**potluck_metadata(kind="delta", order=["b", "a"]), "format": "np"})
    p = Params.decode(data)
    assert list(p) == ["b", "a"] and p.kind is ParamsKind.DELTA


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2", "C64"])
def test_dtypes_numpy_cannot_hold_raise_params_error(dtype):
    # Valid safetensors, but a dtype that potluck's numpy arrays do not support.
    size = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}[dtype]
    data = raw_safetensors({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2 * size]}}, b"\0" * 2 * size)
    with pytest.raises(ParamsError):
        Params.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decode_of_random_bytes_raises_only_params_error(data):
    try:
        Params.decode(data)
    except ParamsError:
        pass


SAFETENSORS_DTYPES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                      "F64", "I64", "U64", "C64", "F8_E4M3", "F8_E5M2", "F4", "NOPE"]


@st.composite
def plausible_safetensors(draw):
    """Well-formed framing with a random (often inconsistent) header and payload."""
    header: dict = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(
                st.sampled_from(["potluck", "other"]),
                st.one_of(
                    st.sampled_from(['{"kind": "delta"}', '{"order": ["a"]}', '{"order": ["b", "a"]}',
                                     '{"kind": 1, "order": [1]}', '{"order": null}', "[1]", "x", "{}"]),
                    st.integers(),
                ),
                max_size=2,
            )
        )
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)):
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        start = draw(st.integers(0, 16))
        header[name] = {
            "dtype": draw(st.sampled_from(SAFETENSORS_DTYPES)),
            "shape": shape,
            "data_offsets": [start, start + draw(st.integers(-2, 64))],
        }
    payload = draw(st.binary(max_size=96))
    return raw_safetensors(header, payload)


@settings(max_examples=200, deadline=None)
@given(plausible_safetensors())
def test_decode_of_random_headers_raises_only_params_error(data):
    try:
        p = Params.decode(data)
    except ParamsError:
        return
    assert Params.decode(p.encode()) == p


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_decode_of_corrupted_valid_bytes_raises_only_params_error(position, value):
    data = bytearray(_valid_bytes())
    data[position % len(data)] = value
    try:
        Params.decode(bytes(data))
    except ParamsError:
        pass


DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_]
NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda n: n != "__metadata__"
)


@st.composite
def small_params(draw):
    names = draw(st.lists(NAMES, max_size=5, unique=True))
    arrays = {}
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        arrays[name] = draw(hnp.arrays(dtype, shape))
    return Params.from_arrays(arrays, draw(st.sampled_from(list(ParamsKind))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_params())
def test_decode_inverts_encode(p):
    q = Params.decode(p.encode())
    assert q == p
    assert list(q) == list(p)
    assert q.schema == p.schema
    assert q.kind is p.kind
    for name in p:
        assert q[name].tobytes() == p[name].tobytes()  # bitwise, so NaN payloads count too
    assert q.encode() == p.encode()


# -- schema and finiteness ---------------------------------------------------------------


def schema_of(**arrays: np.ndarray):
    return Params.from_arrays(arrays).schema


def test_schema_lists_names_shapes_dtypes_in_order():
    p = Params.from_arrays(mixed_arrays())
    assert p.schema == (
        ("zeta.weight", (3, 4), "float32"),
        ("alpha", (5,), "float64"),
        ("mid.count", (), "int64"),
        ("b.half", (2, 1, 3), "float16"),
        ("a.bytes", (7,), "uint8"),
    )
    p.check_schema(p.schema)  # no error


def test_check_schema_names_missing_array():
    p = Params.from_arrays({"w": np.zeros(2, np.float32)})
    expected = schema_of(w=np.zeros(2, np.float32), b=np.zeros(1, np.float32))
    with pytest.raises(SchemaMismatch, match=r"missing arrays \['b'\], unexpected arrays \[\]"):
        p.check_schema(expected)


def test_check_schema_names_extra_array():
    p = Params.from_arrays({"w": np.zeros(2, np.float32), "stray": np.zeros(1)})
    with pytest.raises(SchemaMismatch, match=r"missing arrays \[\], unexpected arrays \['stray'\]"):
        p.check_schema(schema_of(w=np.zeros(2, np.float32)))


def test_check_schema_names_shape_difference():
    p = Params.from_arrays({"w": np.zeros((2, 3), np.float32)})
    with pytest.raises(SchemaMismatch, match=r"'w' has shape \(2, 3\), expected \(3, 2\)"):
        p.check_schema(schema_of(w=np.zeros((3, 2), np.float32)))


def test_check_schema_names_dtype_difference():
    p = Params.from_arrays({"w": np.zeros(2, np.float64)})
    with pytest.raises(SchemaMismatch, match=r"'w' has dtype float64, expected float32"):
        p.check_schema(schema_of(w=np.zeros(2, np.float32)), what="update from node 3")
    with pytest.raises(SchemaMismatch, match="^update from node 3"):
        p.check_schema(schema_of(w=np.zeros(2, np.float32)), what="update from node 3")


def test_check_schema_names_order_difference():
    p = Params.from_arrays({"b": np.zeros(1), "a": np.zeros(1)})
    with pytest.raises(SchemaMismatch, match=r"order \['b', 'a'\], expected \['a', 'b'\]"):
        p.check_schema(schema_of(a=np.zeros(1), b=np.zeros(1)))


def test_schema_mismatch_is_a_params_error():
    assert issubclass(SchemaMismatch, ParamsError) and issubclass(NonFiniteError, ParamsError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_array(bad):
    w = np.zeros((2, 2), np.float32)
    w[1, 0] = bad
    p = Params.from_arrays({"ok": np.ones(3), "layer.w": w, "n": np.array(3, np.int64)})
    with pytest.raises(NonFiniteError, match=r"'layer.w' holds 1 NaN/Inf values"):
        p.check_finite()


def test_check_finite_passes_finite_and_integer_arrays():
    Params.from_arrays({"w": np.full(3, np.finfo(np.float16).max, np.float16), "n": np.arange(3)}).check_finite()


def test_schema_digest_equal_for_equal_schemas_and_differs_otherwise():
    a = Params.from_arrays({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    b = Params.from_arrays({"w": np.ones((2, 3), np.float32), "b": np.full(3, 5, np.float32)}, ParamsKind.DELTA)
    assert a.digest != b.digest
    assert a.schema_digest == b.schema_digest == schema_digest(a.schema)
    assert schema_digest(tuple((n, list(s), d) for n, s, d in a.schema)) == a.schema_digest
    other_shape = Params.from_arrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
    other_dtype = Params.from_arrays({"w": np.zeros((2, 3), np.float64), "b": np.zeros(3, np.float32)})
    other_order = Params.from_arrays({"b": np.zeros(3, np.float32), "w": np.zeros((2, 3), np.float32)})
    assert len({a.schema_digest, other_shape.schema_digest, other_dtype.schema_digest,
                other_order.schema_digest}) == 4


# -- pickling and foreign files ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ParamsKind))
def test_pickle_round_trip_keeps_digest_kind_order_and_read_only(kind):
    p = Params.from_arrays(mixed_arrays(), kind)
    q = pickle.loads(pickle.dumps(p))
    assert q.digest == p.digest
    assert q.kind is kind
    assert list(q) == list(p)
    for name in q:
        assert not q[name].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        q["alpha"][0] = 1.0


def test_plain_safetensors_file_decodes_sorted_and_full(tmp_path):
    arrays = {"zz": np.arange(3, dtype=np.float32), "aa": np.ones((2, 2)), "mm": np.array(5, np.int64)}
    data = st_save(arrays)  # no potluck metadata at all
    p = Params.decode(data)
    assert list(p) == ["aa", "mm", "zz"]
    assert p.kind is ParamsKind.FULL
    for name, arr in arrays.items():
        np.testing.assert_array_equal(p[name], arr)
        assert p[name].dtype == arr.dtype


def test_plain_safetensors_with_foreign_metadata_decodes():
    data = st_save({"b": np.zeros(1, np.float32), "a": np.zeros(2, np.float32)}, metadata={"format": "pt"})
    p = Params.decode(data)
    assert list(p) == ["a", "b"] and p.kind is ParamsKind.FULL


def test_decoding_canonical_bytes_reuses_them_and_other_bytes_are_re_encoded():
    p = Params.from_arrays({"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.int64)}, ParamsKind.DELTA)
    data = p.encode()
    decoded = Params.decode(data)
    assert decoded.encode() is data and decoded.digest == p.digest  # no copy, no re-encoding
    from safetensors.numpy import save

    foreign = save({"a": np.ones((2, 2), np.int64), "b": np.arange(3, dtype=np.float32)}, metadata={"x": "y"})
    other = Params.decode(foreign)
    assert other.encode() != foreign  # not canonical: encoded afresh, same arrays
    assert Params.decode(other.encode()).schema == other.schema
    assert decoded.with_kind(ParamsKind.DELTA) is decoded
