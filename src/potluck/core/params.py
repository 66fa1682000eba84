"""Parameters: an immutable, ordered, content-addressed mapping of names to arrays.

A PyTorch ``state_dict`` maps onto :class:`Params` one to one. On the wire and on disk
parameters are safetensors; a model's identity is the SHA-256 of that encoding, so the
same arrays always give the same digest whatever process or machine made them.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, TypeGuard

import numpy as np

from potluck.core import safetensors_format
from potluck.core.errors import NonFiniteError, ParamsError, SchemaMismatch

# One metadata key holding sorted JSON: safetensors writes several metadata keys in an
# unspecified order, which would make the "canonical" bytes (and digests) vary.
_META_KEY = "potluck"

# One entry of a schema: (name, shape, dtype string such as "float32").
SchemaEntry = tuple[str, tuple[int, ...], str]


class ParamsKind(enum.Enum):
    """Whether arrays are a model's full weights or a difference between two models."""

    FULL = "full"
    DELTA = "delta"


class Params(Mapping[str, np.ndarray]):
    """Ordered named arrays, read-only, with a canonical encoding and digest.

    Build one with a named constructor: :meth:`from_arrays` (copies, so later changes
    to the caller's arrays cannot leak in) or :meth:`decode` (safetensors bytes).
    Arrays handed out are read-only views; arithmetic produces new arrays.

    >>> p = Params.from_arrays({"w": np.zeros((2, 2), np.float32)})
    >>> p.schema
    (('w', (2, 2), 'float32'),)
    """

    __slots__ = ("_arrays", "_kind", "_digest", "_encoded")

    def __init__(self, arrays: dict[str, np.ndarray], kind: ParamsKind, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use Params.from_arrays(...) or Params.decode(...)")
        self._arrays = arrays
        self._kind = kind
        self._digest: str | None = None
        # The canonical encoding, when these arrays are views into it (decoded from
        # canonical bytes): encode() and digest then cost no copy and no re-encoding.
        self._encoded: bytes | memoryview | None = None

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, Any], kind: ParamsKind = ParamsKind.FULL, *, copy: bool = True
    ) -> Params:
        """Wrap named arrays in order. ``copy=False`` adopts arrays the caller gives up."""
        out: dict[str, np.ndarray] = {}
        for name, value in arrays.items():
            if not isinstance(name, str) or not name:
                raise ParamsError(f"parameter names must be non-empty strings, got {name!r}")
            arr = np.array(value, copy=True) if copy else np.asarray(value)
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise ParamsError(f"parameter {name!r} has unsupported dtype {arr.dtype}")
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            arr.setflags(write=False)
            out[name] = arr
        return cls(out, kind, _token=_PRIVATE)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Params:
        """Parse safetensors bytes made by :meth:`encode` (or any safetensors file).

        Raises :class:`ParamsError` with the reason when the bytes are not valid. The
        arrays are read-only views into ``data`` (no copy) when it is ``bytes``, or a
        memoryview of a read-only numpy byte array that owns its memory
        (``transport/bulk/`` receives payloads that way, to skip a model-sized copy).
        """
        raw: bytes | memoryview = data if isinstance(data, bytes) or _immutable_bytes(data) else bytes(data)  # fixed memory
        try:
            arrays, stored = safetensors_format.decode(raw)
        except ParamsError as exc:
            raise ParamsError(f"cannot decode parameters: {exc}") from exc
        meta = _potluck_metadata(stored)
        kind_text = meta.get("kind", ParamsKind.FULL.value)
        try:
            kind = ParamsKind(kind_text)
        except (ValueError, TypeError) as exc:
            raise ParamsError(f"cannot decode parameters: unknown kind {kind_text!r}") from exc
        order = _parse_order(meta.get("order"), arrays)
        params = cls.from_arrays({name: arrays[name] for name in order}, kind, copy=False)
        header_end = 8 + int.from_bytes(raw[:8], "little")
        if safetensors_format.header(params._arrays, {_META_KEY: params._metadata_json()}) == raw[8:header_end]:
            params._encoded = raw  # the same header means the same layout: these are the canonical bytes
        return params

    # -- mapping protocol -------------------------------------------------------

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return f"Params({self._kind.value}, {len(self)} arrays, {self.num_values} values)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled across processes: rebuild read-only without copying the arrays again.
        return (_rebuild, (self._arrays, self._kind.value))

    # -- properties -------------------------------------------------------------

    @property
    def kind(self) -> ParamsKind:
        return self._kind

    @property
    def schema(self) -> tuple[SchemaEntry, ...]:
        """Names, shapes and dtypes in order; two models fit together iff schemas are equal."""
        return tuple((n, tuple(a.shape), str(a.dtype)) for n, a in self._arrays.items())

    @property
    def schema_digest(self) -> str:
        """SHA-256 of the schema, for cheap compatibility checks across processes."""
        return schema_digest(self.schema)

    @property
    def num_values(self) -> int:
        return sum(int(a.size) for a in self._arrays.values())

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())

    @property
    def encoded_size(self) -> int:
        """Bytes of :meth:`encode`'s output (what a transfer moves), computed without encoding."""
        return safetensors_format.encoded_size(self._arrays, {_META_KEY: self._metadata_json()})

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the canonical encoding (computed once, then cached)."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.encode()).hexdigest()
        return self._digest

    # -- encoding and checks ------------------------------------------------------

    def encode(self) -> bytes | memoryview:
        """Canonical safetensors bytes: the same arrays always give the same bytes. A read-only
        memoryview when these parameters were decoded from one (see :meth:`decode`)."""
        if self._encoded is not None:
            return self._encoded
        return safetensors_format.encode(self._arrays, {_META_KEY: self._metadata_json()})

    def _metadata_json(self) -> str:
        return json.dumps({"kind": self._kind.value, "order": list(self._arrays)}, sort_keys=True)

    def with_kind(self, kind: ParamsKind) -> Params:
        return self if kind is self._kind else Params(self._arrays, kind, _token=_PRIVATE)

    def check_schema(self, expected: tuple[SchemaEntry, ...], *, what: str = "parameters") -> None:
        """Raise :class:`SchemaMismatch` naming the first difference from ``expected``."""
        mine = self.schema
        if mine == expected:
            return
        mine_names = [e[0] for e in mine]
        want_names = [e[0] for e in expected]
        missing = [n for n in want_names if n not in self._arrays]
        extra = [n for n in mine_names if n not in set(want_names)]
        if missing or extra:
            raise SchemaMismatch(f"{what}: missing arrays {missing}, unexpected arrays {extra}")
        if mine_names != want_names:
            raise SchemaMismatch(f"{what}: arrays in order {mine_names}, expected {want_names}")
        for (name, shape, dtype), (_, want_shape, want_dtype) in zip(mine, expected):
            if shape != want_shape:
                raise SchemaMismatch(f"{what}: {name!r} has shape {shape}, expected {want_shape}")
            if dtype != want_dtype:
                raise SchemaMismatch(f"{what}: {name!r} has dtype {dtype}, expected {want_dtype}")

    def check_finite(self, *, what: str = "parameters") -> None:
        """Raise :class:`NonFiniteError` naming the first array that holds NaN or Inf."""
        for name, arr in self._arrays.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise NonFiniteError(f"{what}: {name!r} holds {bad} NaN/Inf values")


_PRIVATE = object()


def _immutable_bytes(data: object) -> TypeGuard[memoryview]:
    """A memoryview nothing can write through: of a read-only numpy uint8 array that owns
    its memory (a read-only view of a writable buffer could still change under us)."""
    if not isinstance(data, memoryview) or not data.readonly or data.ndim != 1 or data.format != "B":
        return False
    base = data.obj
    return isinstance(base, np.ndarray) and not base.flags.writeable and base.flags.owndata and base.dtype == np.uint8


def _rebuild(arrays: dict[str, np.ndarray], kind: str) -> Params:
    return Params.from_arrays(arrays, ParamsKind(kind), copy=False)


def schema_digest(schema: tuple[SchemaEntry, ...]) -> str:
    text = json.dumps([[n, list(s), d] for n, s, d in schema], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _potluck_metadata(stored: dict[str, str]) -> dict[str, Any]:
    """potluck's metadata object; empty for safetensors files written by other tools."""
    if _META_KEY not in stored:
        return {}
    try:
        ours = json.loads(stored[_META_KEY])
    except (ValueError, RecursionError) as exc:
        raise ParamsError(f"cannot decode parameters: bad {_META_KEY!r} metadata") from exc
    if not isinstance(ours, dict):
        raise ParamsError(f"cannot decode parameters: {_META_KEY!r} metadata is not an object")
    return ours


def _parse_order(order: object, arrays: dict[str, np.ndarray]) -> list[str]:
    if order is None:
        return sorted(arrays)
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(arrays) or len(order) != len(arrays):
        raise ParamsError("cannot decode parameters: the stored order does not list the stored arrays")
    return [str(n) for n in order]
