"""Robust averaging of a group's parts: the owner of a part takes the coordinate-wise
median or trimmed mean of the members' chunks instead of their weighted mean.

A malicious member (valid certificate) can send any finite chunk with any weight. The
weighted mean (``allreduce.PartReducer``) follows it without bound; the rules here, from
``strategies/robust_rules.py``, bound its effect as long as it is a minority of the
chunks that arrived:

================  =============================================  ============================
``--averaging``   the reduced part, per coordinate                a malicious minority of f
================  =============================================  ============================
``mean``          Σ wⱼ·xⱼ / Σ wⱼ (streams; memory: one part)      unbounded
``median``        the median of the chunks (unweighted)           bounded while f < n/2
``trimmed``       sort, drop ⌊β·n⌋ at each end, average the rest  bounded while f ≤ ⌊β·n⌋
================  =============================================  ============================

The robust rules ignore the self-declared weights (a liar would declare a large one)
and hold every chunk of the part until the reduce closes: memory n × part, i.e. about
one model per owner, not n models. ``n`` is the number of chunks that arrived, so a
member that died simply is not in the order statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.core.errors import ConfigError, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.peer.allreduce import PartReducer, ReducedPart
from potluck.strategies.robust_rules import coordinate_median, trimmed_mean

RULES = ("mean", "median", "trimmed")


@dataclass(frozen=True)
class Averaging:
    """How a part's owner reduces the chunks: ``rule`` in :data:`RULES`, ``trim`` = β."""

    rule: str = "mean"
    trim: float = 0.25

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"--averaging must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"--trim must be in [0, 0.5), got {self.trim}")

    def reducer(self, part: int, length: int, members: Sequence[str]) -> PartReducer:
        """A fresh reducer for one part under this rule."""
        if self.rule == "mean":
            return PartReducer(part, length, members)
        return RobustPartReducer(part, length, members, self)


ReducerFactory = Callable[[int, int, Sequence[str]], PartReducer]


class RobustPartReducer(PartReducer):
    """A :class:`PartReducer` that keeps the chunks and reduces them by median or trimmed mean.

    ``add`` refuses exactly what the mean's does (non-member, twice, length, NaN/Inf,
    weight ≤ 0); the weights are summed for the record but do not weigh the result.
    """

    def __init__(self, part: int, length: int, members: Sequence[str], averaging: Averaging) -> None:
        super().__init__(part, length, members)
        self.averaging = averaging
        self._chunks: dict[str, np.ndarray] = {}

    def add(self, sender: str, chunk: np.ndarray, weight: float) -> None:
        super().add(sender, chunk, weight)
        self._chunks[sender] = np.array(chunk, np.float64)

    def result(self, dtype: np.dtype | type = np.float32) -> ReducedPart:
        mean = super().result(dtype)  # checks that something arrived; gives the weight total
        chunks = [Params.from_arrays({"part": self._chunks[s]}, ParamsKind.DELTA, copy=False) for s in mean.contributors]
        if self.averaging.rule == "median":
            reduced = coordinate_median(chunks)
        elif self.averaging.rule == "trimmed":
            reduced = trimmed_mean(chunks, self.averaging.trim)
        else:  # pragma: no cover - Averaging validates the rule
            raise StrategyError(f"unknown averaging rule {self.averaging.rule!r}")
        values = reduced["part"].astype(dtype)
        values.setflags(write=False)
        return ReducedPart(self.part, values, mean.weight, mean.contributors)
