"""The ``secagg`` update stage: clip each value, quantise it to b bits, mask it.

Always the last stage of a node's pipeline (after ``dp``), because nothing can be done
to a masked vector but add it. Its input is the node's DELTA; its output has the same
names and shapes, as uint32 ring elements. The session it masks with was set up by the
exchange steps that precede the fit (``protocol.py``) and lives in this stage's slice
of the node's update state, under ``"session"``; the fit config names the session it
expects (``update.secagg.session``), so a stale or missing one fails the fit instead of
masking with the wrong keys.

A single masked input cannot be decoded: :meth:`decode` refuses, and the server sums
the inputs in the ring instead (``runtime/secure.py``). Models with integer arrays are
refused: a counter cannot be clipped to [−c, c] and averaged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from potluck.core.errors import ConfigError, ParamsError, StrategyError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.updates.pipeline import UpdateStage, register

Schema = tuple[SchemaEntry, ...]


@register
class SecureMask(UpdateStage):
    """Clip to [−clip, clip], quantise to ``bits`` with stochastic rounding, add the masks."""

    name: ClassVar[str] = "secagg"

    def __init__(self, clip: float, bits: int, session: str = "") -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 31:
            raise ConfigError(f"secagg stage: bits must be an integer in [1, 31], got {bits!r}")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < float("inf"):
            raise ConfigError(f"secagg stage: clip must be a finite number > 0, got {clip!r}")
        self.clip, self.bits, self.session = float(clip), bits, str(session)

    def settings(self) -> dict[str, Scalar]:
        return {"clip": self.clip, "bits": self.bits}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> SecureMask:
        known = {"clip", "bits", "session"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"update stage secagg: unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}")
        if "clip" not in settings or "bits" not in settings:
            raise ConfigError("update stage secagg: options clip and bits are required")
        return cls(settings["clip"], settings["bits"], str(settings.get("session", "")))  # type: ignore[arg-type]

    def wire_schema(self, schema: Schema) -> Schema:
        for name, _, dtype in schema:
            if np.dtype(dtype).kind != "f":
                raise ConfigError(f"secure aggregation needs floating-point parameters; {name} is {dtype}")
        return tuple((name, shape, "uint32") for name, shape, _ in schema)

    def encode(self, update: Params, state: dict[str, Any], rng: np.random.Generator) -> Params:
        # imported here: registering the stage must not load `cryptography` in runs without it
        from potluck.updates.secagg.masking import quantise
        from potluck.updates.secagg.protocol import NodeSession

        session = state.get("session")
        if not isinstance(session, NodeSession) or (self.session and session.session != self.session):
            have = session.session if isinstance(session, NodeSession) else "none"
            raise StrategyError(f"secure aggregation: this fit is for session {self.session or '?'}, "
                                f"the node's key agreement is for {have}")
        self.wire_schema(update.schema)
        flat = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in update.values()])
        masked = session.mask(quantise(flat, self.clip, self.bits, rng))
        out, start = {}, 0
        for name, arr in update.items():
            out[name] = masked[start:start + arr.size].reshape(arr.shape)
            start += arr.size
        return Params.from_arrays(out, ParamsKind.DELTA, copy=False)

    def decode(self, wire: Params, schema: Schema) -> Params:
        raise ParamsError("a masked update cannot be decoded alone; the server sums masked updates first")
