"""The safetensors format, written in one pass and read without copying.

The ``safetensors`` library copies every tensor on save (twice) and on load (once);
for a model of tens of MB crossing the wire several times per round those copies cost
more than the transfer. The format is small — an 8-byte little-endian header length,
a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes —
so this module writes it with a single copy and reads it as numpy views into the
buffer. The output is byte-identical to ``safetensors.numpy.save`` (tests use the
library as the oracle), and any file the library writes is read here.

Reading is stricter than the library: duplicate names, unknown fields and byte ranges
that overlap or leave holes are refused with :class:`ParamsError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from potluck.core.errors import ParamsError

MAX_HEADER_BYTES = 100_000_000  # the library's own limit
_MAX_DIMS = 64  # numpy's limit
METADATA_KEY = "__metadata__"

# Tag for each supported dtype, in the library's order: tensors are laid out by this
# rank, largest first, then by name (this makes the encoding canonical).
_TAGS = ("BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "F64", "I64", "U64")
_DTYPES = dict(zip(_TAGS, ("?", "u1", "i1", "<i2", "<u2", "<f2", "<i4", "<u4", "<f4", "<f8", "<i8", "<u8")))
_RANK = {tag: i for i, tag in enumerate(_TAGS)}
_TAG_OF = {np.dtype(code).newbyteorder("<"): tag for tag, code in _DTYPES.items()}


def tag_of(dtype: np.dtype[Any]) -> str:
    tag = _TAG_OF.get(dtype.newbyteorder("<"))
    if tag is None:
        raise ParamsError(f"dtype {dtype} cannot be stored in safetensors by potluck")
    return tag


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes for ``arrays``; one allocation, each array copied once."""
    text, entries = _layout(arrays, metadata)
    pieces: list[bytes | memoryview] = [len(text).to_bytes(8, "little"), text]
    pieces += [e[3].data.cast("B") if e[3].size else b"" for e in entries]  # raw bytes, no copy yet
    return b"".join(pieces)


def header(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The padded JSON header :func:`encode` writes for ``arrays`` (no array is copied)."""
    return _layout(arrays, metadata)[0]


def encoded_size(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """``len(encode(arrays, metadata))`` without copying any array."""
    text, entries = _layout(arrays, metadata)
    return 8 + len(text) + sum(e[3].nbytes for e in entries)


def _layout(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[int, str, str, np.ndarray]]]:
    """The padded JSON header and the arrays in file order (little-endian, dense)."""
    entries = []
    for name, arr in arrays.items():
        tag = tag_of(arr.dtype)
        if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        entries.append((-_RANK[tag], name, tag, arr))
    entries.sort(key=lambda e: (e[0], e[1]))
    header: dict[str, Any] = {METADATA_KEY: dict(metadata)} if metadata else {}
    offset = 0
    for _, name, tag, arr in entries:
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned
    return text, entries


def decode(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read-only views of the arrays in ``data`` (in file order) and the metadata.

    The views share ``data``'s memory; pass immutable bytes, or a buffer nobody will
    write to again.
    """
    size = len(data)
    if size < 8:
        raise ParamsError(f"{size} bytes are too few for a safetensors header length")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise ParamsError(f"header of {header_len:,} bytes exceeds the limit of {MAX_HEADER_BYTES:,}")
    if 8 + header_len > size:
        raise ParamsError(f"header of {header_len:,} bytes runs past the end of {size:,} bytes")
    header = _parse_header(bytes(data[8 : 8 + header_len]))
    metadata = _metadata(header.pop(METADATA_KEY, None))
    base, body = 8 + header_len, size - 8 - header_len
    layout = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: (e[3], e[4]))
    arrays: dict[str, np.ndarray] = {}
    expected = 0
    for name, dtype, shape, begin, end in layout:
        if begin != expected:
            what = "overlaps the previous tensor" if begin < expected else "leaves a gap before it"
            raise ParamsError(f"tensor {name!r} starts at byte {begin:,}, which {what}")
        if end > body:
            raise ParamsError(f"tensor {name!r} ends at byte {end:,}, past the {body:,} data bytes")
        count = math.prod(shape)
        if count * dtype.itemsize != end - begin:
            raise ParamsError(
                f"tensor {name!r} of shape {list(shape)} needs {count * dtype.itemsize:,} bytes, has {end - begin:,}"
            )
        if len(shape) > _MAX_DIMS:
            raise ParamsError(f"tensor {name!r} has {len(shape)} dimensions; numpy holds at most {_MAX_DIMS}")
        try:
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=base + begin).reshape(shape)
        except ValueError as exc:  # a zero-size shape with an extent numpy cannot index
            raise ParamsError(f"tensor {name!r} has shape {list(shape)}, which numpy cannot hold: {exc}") from exc
        arr.flags.writeable = False
        arrays[name] = arr
        expected = end
    if expected != body:
        raise ParamsError(f"{body - expected:,} data bytes after the last tensor belong to none")
    return arrays, metadata


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ParamsError(f"the header names {dup!r} twice")
    return out


def _unsigned_or_float(text: str) -> int | float:
    return float(text) if text.startswith("-") else int(text)


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"the header is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not text.startswith("{"):
        raise ParamsError("the header is not a JSON object")
    try:
        # Sizes are unsigned: a negative literal (even "-0", which json reads as int 0)
        # becomes a float here, so the shape and offset checks refuse it as the library does.
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_unsigned_or_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int over 4300 digits
        raise ParamsError(f"the header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ParamsError("the header is not a JSON object")
    return header


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ParamsError(f"{METADATA_KEY!r} must map names to strings")
    return value


def _entry(name: str, info: object) -> tuple[str, np.dtype[Any], tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ParamsError(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
    tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(tag, str) or tag not in _DTYPES:
        raise ParamsError(f"tensor {name!r} has dtype {tag!r}, which numpy cannot hold")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ParamsError(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise ParamsError(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    if end < begin:
        raise ParamsError(f"tensor {name!r} ends (byte {end:,}) before it begins (byte {begin:,})")
    return name, np.dtype(_DTYPES[tag]), tuple(shape), begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
