"""The instructions a fleet pool has handed out: open ones, and what became of the rest.

An instruction is *open* from the moment it is put in a node's inbox until its result
is accepted or refused, its node leaves or goes silent, or the dispatch that made it
ends (its deadline passed, or the coordinator stopped reading it). Open instructions
are therefore bounded by the dispatches in flight. Answered and closed ones are kept
only to tell a repeat from a replay: the most recent ``remember`` of each (see
:class:`~potluck.backends.fleet.bounded.RecentIds`). A push for a forgotten one is
refused as an unknown instruction, never accepted.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from potluck.backends.fleet.bounded import RecentIds
from potluck.core.errors import NodeError
from potluck.core.messages import EvaluateResult, FitResult, Scalar
from potluck.runtime.pool import ExchangeReply
from potluck.transport.fleet_messages import InstructionKind

Outcome = Union[FitResult, EvaluateResult, ExchangeReply, NodeError]
# Answered and closed instruction ids kept, each: about 100 bytes an id, ~10 MiB in all.
DEFAULT_REMEMBER = 50_000


@dataclass(frozen=True)
class EncodedModel:
    """A model as it goes on the wire: safetensors bytes and their BLAKE3 digest."""

    payload: bytes | memoryview
    digest: str


@dataclass(frozen=True)
class Send:
    """One instruction the coordinator asked for: to ``node_id``, for ``round``."""

    node_id: str
    round: int
    kind: InstructionKind
    config: Mapping[str, Scalar]
    seed: int
    model: EncodedModel


@dataclass(frozen=True)
class Arrival:
    """An open instruction's outcome, on its way to the dispatch waiting for it."""

    instruction_id: str
    outcome: Outcome


@dataclass(frozen=True, eq=False)
class OpenInstruction:
    """An instruction handed out and not yet answered, and where its outcome goes."""

    node_id: str
    round: int
    kind: InstructionKind
    settings: str  # digest of the instruction's config, which the node's signature covers
    arrivals: collections.deque[Arrival]


class InstructionBook:
    """Open, answered and closed instructions; callers hold the pool's lock."""

    def __init__(self, remember: int = DEFAULT_REMEMBER) -> None:
        self.open: dict[str, OpenInstruction] = {}
        self.answered = RecentIds(remember)  # results accepted: a repeat is acknowledged
        self.closed = RecentIds(remember)  # no longer taking results; the note says why

    def close(self, instruction_id: str, why: str) -> OpenInstruction | None:
        """Stop ``instruction_id`` taking results; the open instruction, if it was."""
        self.closed.add(instruction_id, why)
        return self.open.pop(instruction_id, None)

    def settle(self, instruction_id: str, outcome: Outcome, why_closed: str | None = None) -> bool:
        """Deliver ``outcome`` of an open instruction to its dispatch; it is answered, or
        closed for ``why_closed``. False (nothing done) when it is not open."""
        ins = self.open.pop(instruction_id, None)
        if ins is None:
            return False
        ins.arrivals.append(Arrival(instruction_id, outcome))
        if why_closed is None:
            self.answered.add(instruction_id)
        else:
            self.closed.add(instruction_id, why_closed)
        return True
