"""Simulated Byzantine nodes: what an attacker does to its update, and who attacks.

For testing robust aggregation in ``potluck simulate`` (``--attack``,
``--attack-fraction``). An attacking node trains honestly, then replaces its delta
``d`` (local − global) before sending it; the number of examples it reports is left
as is.

=========  ================================================================
attack     the delta sent
=========  ================================================================
none       ``d`` (honest)
sign-flip  ``−d``: pushes the model back the way the node's data pulls it
scale      ``100·d``: the honest direction, a hundred times too far
random     Gaussian noise, per array with standard deviation equal to the
           RMS of that array of ``d``: the same norm scale as an honest
           update (so a norm bound cannot tell it apart) but no direction
=========  ================================================================

Only floating-point arrays are changed; integer counters are sent as computed.
Attackers are the first ``round(fraction × nodes)`` of a permutation of the nodes
seeded by the run's seed (:func:`choose_attackers`), so the same seed gives the same
attackers in every process; the random attack draws from the instruction's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from potluck.core.config import ATTACKS
from potluck.core.errors import ConfigError
from potluck.core.params import Params
from potluck.core.seeds import derive_seed, rng_for

SCALE = 100.0


@dataclass(frozen=True)
class Attack:
    """One way of corrupting an update; ``kind`` is one of ``core.config.ATTACKS`` but none."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS or self.kind == "none":
            raise ConfigError(f"unknown attack {self.kind!r}; valid attacks: {', '.join(ATTACKS[1:])}")

    def apply(self, update: Params, seed: int) -> Params:
        """The corrupted copy of ``update`` (a delta); ``seed`` feeds the random attack."""
        rng = np.random.default_rng(derive_seed(seed, "attack")) if self.kind == "random" else None
        out: dict[str, np.ndarray] = {}
        for name, arr in update.items():
            if arr.dtype.kind != "f":
                out[name] = arr
            elif self.kind == "sign-flip":
                out[name] = np.negative(arr)
            elif self.kind == "scale":
                out[name] = np.multiply(arr, arr.dtype.type(SCALE))
            else:
                assert rng is not None
                flat = arr.astype(np.float64).reshape(-1)
                rms = math.sqrt(float(np.dot(flat, flat)) / flat.size) if flat.size else 0.0
                out[name] = (rng.standard_normal(arr.shape) * rms).astype(arr.dtype)
        return Params.from_arrays(out, update.kind, copy=False)


def attacker_count(fraction: float, nodes: int) -> int:
    """Nodes that attack: ``fraction × nodes`` rounded to the nearest whole (halves up)."""
    return math.floor(fraction * nodes + 0.5)


def choose_attackers(node_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The attacking nodes, in ``node_ids`` order: the first ``attacker_count`` of a
    permutation seeded by ``seed`` (the same in every process)."""
    k = attacker_count(fraction, len(node_ids))
    chosen = rng_for(seed, "attackers").permutation(len(node_ids))[:k]
    return [node_ids[i] for i in sorted(chosen)]
