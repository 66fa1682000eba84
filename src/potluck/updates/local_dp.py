"""Node-side differential privacy: clip the delta to norm C, then add Gaussian noise.

The ``dp`` update stage (see ``updates.py``) runs first in the pipeline, before any
compression or masking, so those only ever see a clipped, noised update:

===========  ===================  =====================================================
mode         noise std per node   what it protects
===========  ===================  =====================================================
local        σ·C                  each update on its own (against the server too)
distributed  σ·C / √n             the SUM of the ``n`` updates of a round carries σ·C,
                                  as in central DP; meant to be paired with secure
                                  aggregation, so that nobody sees one update alone
===========  ===================  =====================================================

Clipping scales the update by ``min(1, C / ‖d‖₂)`` over its floating-point arrays
(:func:`~potluck.strategies.robust_rules.clip_to_norm`, in float64): a zero or tiny
update is left as it is, so there is never a division by zero, and noise is added to
it like to any other. Integer arrays (counters such as BatchNorm's
``num_batches_tracked``) are sent unchanged: they count batches, not data values.
Noise is drawn in float64 from the generator the pipeline derives from the fit seed
(run seed, round, attempt, node), then cast back to each array's dtype.

See ``docs/privacy.md`` for the guarantee each mode gives and how it is accounted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from potluck.core.errors import ConfigError
from potluck.core.messages import Scalar
from potluck.core.params import Params
from potluck.strategies.robust_rules import clip_to_norm
from potluck.updates.pipeline import UpdateStage, register

MODES = ("local", "distributed")


def add_gaussian_noise(update: Params, std: float, rng: np.random.Generator) -> Params:
    """``update`` plus N(0, std²) on every value of its float arrays, in array order.

    Draws ``rng.normal(0, std, shape)`` (float64) for each float array in turn and
    casts the sum back to the array's dtype; integer arrays are returned unchanged.
    """
    out: dict[str, np.ndarray] = {}
    for name, arr in update.items():
        if arr.dtype.kind == "f":
            out[name] = (arr.astype(np.float64) + rng.normal(0.0, std, arr.shape)).astype(arr.dtype)
        else:
            out[name] = arr
    return Params.from_arrays(out, update.kind, copy=False)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@register
class GaussianDP(UpdateStage):
    """Clip each node's delta to ``clip`` (C) and add N(0, (σ_node)²) noise per value.

    ``noise_multiplier`` (σ) > 0; ``nodes`` (n ≥ 1) is the number of nodes per round
    whose noise adds up in ``distributed`` mode (ignored in ``local`` mode).

    >>> stage = GaussianDP("distributed", clip=1.0, noise_multiplier=1.0, nodes=4)
    >>> stage.node_std
    0.5
    """

    name: ClassVar[str] = "dp"

    def __init__(self, mode: str, *, clip: float, noise_multiplier: float, nodes: int = 1) -> None:
        if mode not in MODES:
            raise ConfigError(f"dp stage: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.clip = _number(clip, "dp stage: clip")
        self.noise_multiplier = _number(noise_multiplier, "dp stage: noise_multiplier")
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ConfigError(f"dp stage: nodes must be an integer ≥ 1, got {nodes!r}")
        self.nodes = nodes
        if self.clip <= 0 or self.noise_multiplier <= 0:
            raise ConfigError(f"dp stage: clip and noise_multiplier must be > 0, got {clip!r} and {noise_multiplier!r}")

    @property
    def node_std(self) -> float:
        """Standard deviation of the noise one node adds to each value."""
        std = self.noise_multiplier * self.clip
        return std / math.sqrt(self.nodes) if self.mode == "distributed" else std

    def settings(self) -> dict[str, Scalar]:
        return {"mode": self.mode, "clip": self.clip, "noise_multiplier": self.noise_multiplier, "nodes": self.nodes}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> GaussianDP:
        known = {"mode", "clip", "noise_multiplier", "nodes"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"update stage dp: unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}")
        missing = sorted(known - set(settings))
        if missing:
            raise ConfigError(f"update stage dp: option {missing[0]!r} is missing")
        return cls(settings["mode"], clip=settings["clip"], noise_multiplier=settings["noise_multiplier"],  # type: ignore[arg-type]
                   nodes=settings["nodes"])  # type: ignore[arg-type]

    def encode(self, update: Params, state: dict[str, Any], rng: np.random.Generator) -> Params:
        """The clipped update plus this node's noise (a DELTA of the same schema)."""
        return add_gaussian_noise(clip_to_norm(update, self.clip), self.node_std, rng)
