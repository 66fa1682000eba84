"""Top-k sparsification with error feedback: send the largest entries, keep the rest for later.

Selection is **global**: the floating tensors of a node's DELTA are viewed as one vector
of ``n`` values, and the ``k = ceil(ratio · n)`` entries of largest magnitude are sent
(at least one when ``n > 0``). Global selection spends the budget where the update is
large, keeps one index space (so the wire holds one index array, not one per tensor),
and with error feedback no tensor starves: what is left out accumulates until it is
large enough to be chosen.

**Error feedback** (Stich et al. 2018; Karimireddy et al. 2019): the node adds the
residual it kept last time before selecting, and keeps what it did not send::

    acc      = update + residual          residual starts at zero
    sent     = C(acc)                     top-k (values exact, or quantised with bits)
    residual = acc − sent

so over any number of rounds ``Σ sent + residual = Σ update`` (to float rounding): no
part of any update is lost, only delayed. The residual lives in the node's update
``state`` (one per node, see ``runtime/node.py``); a node that restarts starts again from
zero, and a sent update the server then refuses (late, rejected) is not fed back.

With ``bits`` (1–8) the sent values are quantised by ``updates/quantize.py``'s
stochastic rounding over their own range, and the quantisation error joins the residual.

Wire format, ``k`` fixed per run by ``ratio`` and the model's schema:

================  ===========================  =============================================
name              dtype, shape                 contents
================  ===========================  =============================================
``topk:indices``  smallest unsigned int that    positions in the flattened floating tensors
                  holds ``n − 1``, ``(k,)``     (model order), strictly increasing
``topk:values``   the floating tensors' common  the entries at those positions (without bits)
                  dtype, ``(k,)``
``topk:codes``    uint8, ``(ceil(k·bits/8),)``  with bits: the values' packed codes
``topk:range``    float64, ``(2,)``             with bits: the values' minimum and scale
================  ===========================  =============================================

Integer tensors pass through under their own names, as in ``quantize``.

>>> stage = TopK(ratio=0.25)
>>> stage.wire_schema((("w", (2, 4), "float32"),))
(('topk:indices', (2,), 'uint8'), ('topk:values', (2,), 'float32'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from potluck.core.errors import ConfigError, ParamsError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind
from potluck.updates.pipeline import Schema, UpdateStage, register
from potluck.updates.quantize import (
    check_bits,
    check_range,
    dequantize,
    floating_entries,
    pack,
    packed_size,
    passthrough_entries,
    settings_of,
    stochastic_codes,
    unpack,
)

INDICES = "topk:indices"
VALUES = "topk:values"
CODES = "topk:codes"
RANGE = "topk:range"
_OWN = (INDICES, VALUES, CODES, RANGE)


def keep_count(ratio: float, n: int) -> int:
    """``ceil(ratio · n)`` (at least 1 when ``n > 0``, at most ``n``); products within 1e-9
    of an integer count as that integer, so 0.07 × 100 keeps 7, not 8."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(round(ratio * n, 9))))


def index_dtype(n: int) -> str:
    """The smallest unsigned integer dtype that holds every index below ``n``."""
    for dtype in ("uint8", "uint16", "uint32"):
        if n <= np.iinfo(dtype).max + 1:
            return dtype
    return "uint64"


def _values_dtype(floating: list[tuple[str, tuple[int, ...], str]]) -> str:
    return str(np.result_type(*[d for _, _, d in floating])) if floating else "float32"


@register
class TopK(UpdateStage):
    """Send the ``ratio`` largest-magnitude entries (and their indices); feed the rest back."""

    name = "topk"

    def __init__(self, ratio: float = 0.01, bits: int | None = None) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"topk ratio must be a number in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        self.bits = None if bits is None else check_bits(bits, "topk bits")

    def settings(self) -> dict[str, Scalar]:
        return {"ratio": self.ratio, **({"bits": self.bits} if self.bits is not None else {})}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> TopK:
        settings_of(cls.name, settings, ["ratio", "bits"])
        bits = settings.get("bits")
        return cls(settings.get("ratio", 0.01), None if bits is None else check_bits(bits, "update.topk.bits"))  # type: ignore[arg-type]

    def wire_schema(self, schema: Schema) -> Schema:
        floating = floating_entries(schema)
        n = sum(math.prod(shape) for _, shape, _ in floating)
        k = keep_count(self.ratio, n)
        sent: Schema = (((CODES, (packed_size(k, self.bits),), "uint8"), (RANGE, (2,), "float64"))
                        if self.bits is not None else ((VALUES, (k,), _values_dtype(floating)),))
        return (*passthrough_entries(schema, _OWN, self.name), (INDICES, (k,), index_dtype(n)), *sent)

    def encode(self, update: Params, state: dict[str, Any], rng: np.random.Generator) -> Params:
        floating = floating_entries(update.schema)
        kept = passthrough_entries(update.schema, _OWN, self.name)
        dtype = _values_dtype(floating)
        parts = [update[name].ravel() for name, _, _ in floating]
        flat = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
        if not np.isfinite(flat).all():
            raise ParamsError("cannot sparsify an update that holds NaN/Inf values")
        residual = state.get("residual")
        if isinstance(residual, np.ndarray) and residual.shape == flat.shape and residual.dtype == flat.dtype:
            acc = flat + residual
        else:  # the first round, or another model: nothing to feed back
            acc = flat.copy()
        n, k = acc.size, keep_count(self.ratio, acc.size)
        if k < n:
            chosen = np.sort(np.argpartition(np.abs(acc), n - k)[n - k:])
        else:
            chosen = np.arange(n)
        values = acc[chosen]
        arrays = {name: update[name] for name, _, _ in kept}
        arrays[INDICES] = chosen.astype(index_dtype(n))
        if self.bits is None:
            arrays[VALUES] = values
            acc[chosen] = 0  # sent exactly
        else:
            codes, lo, scale = stochastic_codes(values, self.bits, rng)
            arrays[CODES] = pack(codes, self.bits)
            arrays[RANGE] = np.array([lo, scale], np.float64)
            acc[chosen] -= dequantize(codes, lo, scale).astype(dtype)
        state["residual"] = acc  # only now: a failed encode leaves the state as it was
        return Params.from_arrays(arrays, update.kind, copy=False)

    def decode(self, wire: Params, schema: Schema) -> Params:
        wire.check_schema(self.wire_schema(schema), what="top-k update")
        floating = floating_entries(schema)
        dtype = _values_dtype(floating)
        sizes = [math.prod(shape) for _, shape, _ in floating]
        n = sum(sizes)
        indices = wire[INDICES].astype(np.int64)
        if indices.size and (indices[-1] >= n or (np.diff(indices) <= 0).any()):
            raise ParamsError(f"{INDICES}: indices must be strictly increasing and below {n}")
        if self.bits is None:
            values = wire[VALUES]
            if not np.isfinite(values).all():
                raise ParamsError(f"{VALUES}: holds NaN/Inf values")
        else:
            lo, scale = float(wire[RANGE][0]), float(wire[RANGE][1])
            check_range(lo, scale, self.bits, np.dtype(dtype), RANGE)
            codes = unpack(wire[CODES], indices.size, self.bits, what=CODES)
            if scale == 0.0 and codes.any():
                raise ParamsError(f"{CODES}: non-zero codes with scale 0")
            values = dequantize(codes, lo, scale).astype(dtype)
        dense = np.zeros(n, dtype)
        dense[indices] = values
        out: dict[str, np.ndarray] = {}
        start = 0
        for (name, shape, tensor_dtype), size in zip(floating, sizes):
            out[name] = dense[start:start + size].astype(tensor_dtype).reshape(shape)
            start += size
        arrays = {name: out[name] if name in out else wire[name] for name, _, _ in schema}
        return Params.from_arrays(arrays, ParamsKind.DELTA, copy=False)
