"""Quantisation of updates: b-bit codes (1 ≤ b ≤ 8) with unbiased stochastic rounding.

Each floating tensor ``x`` of a node's DELTA is mapped onto ``L = 2**b`` evenly spaced
levels spanning ``[min x, max x]`` (asymmetric: the minimum is the zero point)::

    scale = (max x − min x) / (L − 1)          0 for a constant or empty tensor
    t     = (x − min x) / scale                in [0, L − 1]
    code  = floor(t) + (u < t − floor(t))      u ~ U[0, 1) from the stage's RNG

so ``E[min x + code · scale] = x``: the server's mean of many nodes' updates carries no
rounding bias, only variance (at most ``scale² / 4`` per value). The same seed gives the
same codes. Codes of ``b < 8`` bits are packed (``np.packbits``, most significant bit
first), so 8 bits take a quarter of float32's bytes, 4 bits an eighth, 1 bit 1/32.

Wire format, for a model whose floating tensors hold ``n`` values in all, ``m`` tensors:

==================  ==========================  ===============================================
name                dtype, shape                contents
==================  ==========================  ===============================================
``quantize:codes``  uint8, ``(ceil(n·b/8),)``   every floating tensor's codes, in model order,
                                                ``b`` bits each; the padding bits are zero
``quantize:ranges`` float64, ``(m, 2)``         per floating tensor: its minimum and scale
==================  ==========================  ===============================================

Integer tensors (counters such as ``num_batches_tracked``) pass through under their own
names. One pair of arrays for the whole model keeps the safetensors header small (each
array costs ~60 header bytes), so even a small model shrinks close to ``32 / b`` ×.

>>> from potluck.core.params import Params, ParamsKind
>>> stage = Quantize(bits=2)  # levels min, min + scale, min + 2·scale, max
>>> schema = (("w", (3,), "float32"),)
>>> stage.wire_schema(schema)
(('quantize:codes', (1,), 'uint8'), ('quantize:ranges', (1, 2), 'float64'))
>>> update = Params.from_arrays({"w": np.array([0.0, 1.0, 3.0], np.float32)}, ParamsKind.DELTA)
>>> wire = stage.encode(update, {}, np.random.default_rng(0))
>>> wire["quantize:codes"].tolist(), wire["quantize:ranges"].tolist()  # codes 0, 1, 3 → 0b00_01_11_00
([28], [[0.0, 1.0]])
>>> stage.decode(wire, schema)["w"].tolist()
[0.0, 1.0, 3.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from potluck.core.errors import ConfigError, ParamsError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind
from potluck.updates.pipeline import Schema, UpdateStage, register

CODES = "quantize:codes"
RANGES = "quantize:ranges"


def check_bits(bits: object, where: str = "bits") -> int:
    """``bits`` as an int in [1, 8], or ConfigError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"{where} must be an integer in [1, 8], got {bits!r}")
    return bits


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take once packed."""
    return (count * bits + 7) // 8


def stochastic_codes(x: np.ndarray, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Codes (uint8, one per value), minimum and scale of the finite values ``x``.

    Draws ``x.size`` uniforms from ``rng`` (none for a constant or empty ``x``)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(0, np.uint8), 0.0, 0.0
    lo, hi = float(flat.min()), float(flat.max())
    scale = (hi - lo) / (2**bits - 1)
    if not math.isfinite(scale):
        raise ParamsError(f"values span [{lo:g}, {hi:g}], too wide to quantise")
    if scale == 0.0:
        return np.zeros(flat.size, np.uint8), lo, 0.0
    t = np.clip((flat - lo) / scale, 0.0, 2**bits - 1)
    floor = np.floor(t)
    codes = floor + (rng.random(flat.size) < (t - floor))
    return np.minimum(codes, 2**bits - 1).astype(np.uint8), lo, scale


def dequantize(codes: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """``lo + codes · scale`` in float64."""
    return lo + codes.astype(np.float64) * scale


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint8 below ``2**bits``) packed ``bits`` bits each, most significant first."""
    if bits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    columns = np.unpackbits(codes.reshape(-1, 1), axis=1)[:, 8 - bits:]
    return np.packbits(columns.ravel())


def unpack(data: np.ndarray, count: int, bits: int, *, what: str = CODES) -> np.ndarray:
    """Undo :func:`pack`: ``count`` codes. ParamsError for the wrong size or set padding bits."""
    if data.dtype != np.uint8 or data.shape != (packed_size(count, bits),):
        raise ParamsError(f"{what}: expected {packed_size(count, bits)} uint8 bytes, got {data.dtype} {data.shape}")
    if bits == 8:
        return data
    flat = np.unpackbits(data)
    if flat[count * bits:].any():
        raise ParamsError(f"{what}: padding bits are set")
    columns = flat[: count * bits].reshape(count, bits)
    return (np.packbits(columns, axis=1) >> (8 - bits)).ravel()


def check_range(lo: float, scale: float, bits: int, dtype: np.dtype[Any], what: str) -> None:
    """ParamsError unless ``[lo, lo + (2**bits − 1) · scale]`` is finite and fits ``dtype``."""
    top = lo + (2**bits - 1) * scale
    limit = float(np.finfo(dtype).max)
    if not (math.isfinite(lo) and math.isfinite(scale) and scale >= 0 and abs(lo) <= limit and abs(top) <= limit):
        raise ParamsError(f"{what}: minimum {lo!r} and scale {scale!r} are not a range of {dtype} values")


def floating_entries(schema: Schema) -> list[tuple[str, tuple[int, ...], str]]:
    return [entry for entry in schema if np.dtype(entry[2]).kind == "f"]


def passthrough_entries(schema: Schema, own: Sequence[str], stage: str) -> Schema:
    """The schema's non-floating entries, which a stage sends as they are."""
    kept = tuple(entry for entry in schema if np.dtype(entry[2]).kind != "f")
    clash = sorted({name for name, _, _ in kept} & set(own))
    if clash:
        raise ConfigError(f"update stage {stage}: the model has an array named {clash[0]!r}, which {stage} sends")
    return kept


def settings_of(stage: str, settings: Mapping[str, Scalar], allowed: Sequence[str]) -> None:
    """ConfigError naming the first option of ``settings`` not in ``allowed``."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"update stage {stage} has no option {unknown[0]!r} (options: {', '.join(allowed)})")


@register
class Quantize(UpdateStage):
    """Send each floating tensor as ``bits``-bit codes with a per-tensor minimum and scale."""

    name = "quantize"

    def __init__(self, bits: int = 8) -> None:
        self.bits = check_bits(bits, "quantize bits")

    def settings(self) -> dict[str, Scalar]:
        return {"bits": self.bits}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> Quantize:
        settings_of(cls.name, settings, ["bits"])
        return cls(check_bits(settings.get("bits", 8), "update.quantize.bits"))

    def wire_schema(self, schema: Schema) -> Schema:
        floating = floating_entries(schema)
        count = sum(math.prod(shape) for _, shape, _ in floating)
        return (*passthrough_entries(schema, (CODES, RANGES), self.name),
                (CODES, (packed_size(count, self.bits),), "uint8"), (RANGES, (len(floating), 2), "float64"))

    def encode(self, update: Params, state: dict[str, Any], rng: np.random.Generator) -> Params:
        floating = floating_entries(update.schema)
        kept = passthrough_entries(update.schema, (CODES, RANGES), self.name)
        codes, ranges = [], np.zeros((len(floating), 2), np.float64)
        for row, (name, _, _) in enumerate(floating):
            if not np.isfinite(update[name]).all():
                raise ParamsError(f"cannot quantise {name!r}: it holds NaN/Inf values")
            c, ranges[row, 0], ranges[row, 1] = stochastic_codes(update[name], self.bits, rng)
            codes.append(c)
        packed = pack(np.concatenate(codes) if codes else np.zeros(0, np.uint8), self.bits)
        arrays = {name: update[name] for name, _, _ in kept}
        return Params.from_arrays({**arrays, CODES: packed, RANGES: ranges}, update.kind, copy=False)

    def decode(self, wire: Params, schema: Schema) -> Params:
        wire.check_schema(self.wire_schema(schema), what="quantised update")
        floating = floating_entries(schema)
        sizes = [math.prod(shape) for _, shape, _ in floating]
        codes = unpack(wire[CODES], sum(sizes), self.bits)
        ranges = wire[RANGES]
        out: dict[str, np.ndarray] = {}
        start = 0
        for row, ((name, shape, dtype), size) in enumerate(zip(floating, sizes)):
            lo, scale = float(ranges[row, 0]), float(ranges[row, 1])
            check_range(lo, scale, self.bits, np.dtype(dtype), f"{RANGES} of {name!r}")
            part = codes[start:start + size]
            if scale == 0.0 and part.any():
                raise ParamsError(f"{CODES} of {name!r}: non-zero codes with scale 0")
            out[name] = dequantize(part, lo, scale).astype(dtype).reshape(shape)
            start += size
        arrays = {name: out[name] if name in out else wire[name] for name, _, _ in schema}
        return Params.from_arrays(arrays, ParamsKind.DELTA, copy=False)
