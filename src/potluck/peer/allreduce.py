"""Butterfly all-reduce of one flat vector per group member, without any transport.

A group of ``n`` members (sorted peer ids) splits the vector into ``n`` contiguous
parts (:func:`part_bounds`); member ``i`` owns part ``i``::

    reduce-scatter  every member sends part i of its vector, with its weight, to owner i
    reduce          owner i takes the weighted mean of the chunks that arrived by the
                    deadline: Σ wⱼ·xⱼ / Σ wⱼ over the senders j it heard from
    all-gather      owner i sends the reduced part i (and Σ wⱼ, the senders) to everyone

Each member then holds the mean; every member sends and receives about 2·(n−1)/n of
the vector, whatever n. Failure semantics, which the lane (``exchange.py``) and the
simulation (:func:`butterfly`) share because both run this module's code:

- a member that dies before sending to owner i is missing from part i's mean, and the
  other weights are renormalised (the mean of what arrived, correctly weighted);
- a part whose owner dies is *orphaned*. A member that did not receive it asks the
  others for it (``exchange.py``); if nobody has it, every member sets it to zero and
  reports it in :attr:`AllReduceOutcome.missing_parts`: that slice skips this step's
  update, the same way on every member, so the group's models stay identical (keeping
  one's own values instead would split them apart for good). Nothing is waited for past
  the deadline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from potluck.core.errors import NonFiniteError, SchemaMismatch, StrategyError


def part_bounds(size: int, members: int) -> list[tuple[int, int]]:
    """``members`` contiguous ``[start, stop)`` slices covering ``range(size)``, sizes
    differing by at most one (the first ``size % members`` parts are one longer)."""
    if members < 1 or size < 0:
        raise StrategyError(f"cannot split {size} values among {members} members")
    base, extra = divmod(size, members)
    bounds, start = [], 0
    for i in range(members):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def group_digest(step: int, members: Sequence[str]) -> str:
    """Names a group: hex SHA-256 of the outer step and the sorted member ids (16 chars)."""
    text = f"potluck.peer.group.v1:{step}:" + ",".join(sorted(members))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReducedPart:
    """Part ``part`` after the reduce: the weighted mean, the weight total, who is in it."""

    part: int
    values: np.ndarray
    weight: float
    contributors: tuple[str, ...]


class PartReducer:
    """Folds the chunks of one part in as they arrive (memory: one part, not n).

    ``add`` refuses, with a specific error, a sender outside ``members``
    (StrategyError), a second chunk from the same sender (StrategyError), a chunk of
    the wrong length (SchemaMismatch), NaN/Inf (NonFiniteError) or a weight ≤ 0.
    """

    def __init__(self, part: int, length: int, members: Sequence[str]) -> None:
        self.part, self.length = part, length
        self.members = frozenset(members)
        self._sum = np.zeros(length, np.float64)
        self._weight = 0.0
        self._senders: list[str] = []

    @property
    def complete(self) -> bool:
        return len(self._senders) == len(self.members)

    @property
    def senders(self) -> tuple[str, ...]:
        return tuple(sorted(self._senders))

    def add(self, sender: str, chunk: np.ndarray, weight: float) -> None:
        if sender not in self.members:
            raise StrategyError(f"part {self.part}: {sender!r} is not a member of this group")
        if sender in self._senders:
            raise StrategyError(f"part {self.part}: a second chunk from {sender!r}")
        if chunk.shape != (self.length,):
            raise SchemaMismatch(f"part {self.part}: chunk from {sender!r} has shape {chunk.shape}, "
                                 f"expected ({self.length},)")
        if not (np.isfinite(weight) and weight > 0):
            raise StrategyError(f"part {self.part}: weight from {sender!r} must be > 0, got {weight}")
        if not np.isfinite(chunk).all():
            raise NonFiniteError(f"part {self.part}: chunk from {sender!r} holds NaN or Inf")
        self._sum += weight * chunk.astype(np.float64)
        self._weight += weight
        self._senders.append(sender)

    def result(self, dtype: np.dtype | type = np.float32) -> ReducedPart:
        if not self._senders:
            raise StrategyError(f"part {self.part}: no chunk arrived")
        values = (self._sum / self._weight).astype(dtype)
        values.setflags(write=False)
        return ReducedPart(self.part, values, self._weight, self.senders)


@dataclass(frozen=True)
class AllReduceOutcome:
    """What one member ends with: ``values`` (the mean; zero in orphaned parts)."""

    values: np.ndarray
    missing_parts: tuple[int, ...]
    contributors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    signed: Mapping[str, str] = field(default_factory=dict)  # peer -> signed contribution root (lane)
    refused: Mapping[str, str] = field(default_factory=dict)  # peer -> why its chunk was refused (lane)

    @property
    def complete(self) -> bool:
        return not self.missing_parts


def assemble(local: np.ndarray, bounds: Sequence[tuple[int, int]], parts: Mapping[int, ReducedPart]) -> AllReduceOutcome:
    """The member's result from the reduced parts it received; zero where one is missing."""
    out = np.zeros_like(local)
    missing = []
    for i, (start, stop) in enumerate(bounds):
        if i in parts:
            out[start:stop] = parts[i].values
        else:
            missing.append(i)
    return AllReduceOutcome(out, tuple(missing), {i: p.contributors for i, p in parts.items()})


Delivered = Callable[[str, str, str], bool]


def butterfly(vectors: Mapping[str, np.ndarray], weights: Mapping[str, float],
              delivered: Delivered = lambda sender, receiver, phase: True,
              reducer: Callable[[int, int, Sequence[str]], PartReducer] = PartReducer) -> dict[str, AllReduceOutcome]:
    """Run the all-reduce in one process: the simulation and the oracle of the lane.

    ``delivered(sender, receiver, phase)`` (phase ``"reduce"`` or ``"gather"``) says
    whether a message arrives; a member always hears itself. ``reducer(part, length,
    members)`` makes each owner's reducer (the weighted mean; ``robust.Averaging.reducer``
    for a median or trimmed mean). Returns each member's outcome.
    """
    members = sorted(vectors)
    sizes = {v.shape for v in vectors.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise SchemaMismatch(f"all-reduce needs flat vectors of one length, got shapes {sorted(sizes)}")
    bounds = part_bounds(next(iter(sizes))[0], len(members))
    reduced: dict[int, ReducedPart] = {}
    for i, owner in enumerate(members):
        start, stop = bounds[i]
        part = reducer(i, stop - start, members)
        for sender in members:
            if sender == owner or delivered(sender, owner, "reduce"):
                part.add(sender, vectors[sender][start:stop], weights[sender])
        reduced[i] = part.result(vectors[owner].dtype)
    outcomes = {}
    for member in members:
        heard = {i: part for i, part in reduced.items()
                 if members[i] == member or delivered(members[i], member, "gather")}
        outcomes[member] = assemble(vectors[member], bounds, heard)
    return outcomes
