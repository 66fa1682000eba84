"""The seam between *what to compute* and *where it runs*: a pool of nodes.

The coordinator drives every backend (in-process, process pool, the gRPC fleet; a
Ray backend would be one more) through this one interface, so sampling, deadlines,
quorum, aggregation and commits behave the same in simulation and deployment. An
in-memory implementation for tests is :class:`potluck.testing.ScriptedPool`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

from potluck.core.errors import ConfigError, NodeError
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction, FitResult

FitOutcome = Union[FitResult, NodeError]
EvaluateOutcome = Union[EvaluateResult, NodeError]


@dataclass(frozen=True)
class ExchangeReply:
    """A node's answer to one step of a multi-message protocol (secure aggregation)."""

    node_id: str
    payload: bytes


ExchangeOutcome = Union[ExchangeReply, NodeError]


class NodePool(Protocol):
    """Nodes that can be asked to fit and evaluate.

    ``fit`` and ``evaluate`` yield exactly one outcome per instruction, in any order,
    as they complete: a result, or a :class:`NodeError` (``NodeFailed``,
    ``NodeTimedOut``, ``NodeLeft``) naming the node. ``timeout`` is in seconds from the
    call; once it passes, every outstanding instruction yields ``NodeTimedOut`` and
    the iterator ends. An implementation never blocks past the timeout by more than
    the time one in-process call takes to return.

    ``wait_for_nodes`` and ``exchange`` are optional: a pool that subclasses
    ``NodePool`` inherits the defaults below (nodes that are all there from the start;
    no protocol messages) and overrides what it can do better.
    """

    def node_ids(self) -> Sequence[str]:
        """Nodes available for the next round, in a stable order."""
        ...

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        ...

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        ...

    def close(self) -> None:
        """Release workers and connections; idempotent."""
        ...

    def wait_for_nodes(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``count`` nodes are available; whether they
        are. Deployed pools wait for nodes still joining; by default the nodes there are
        all there will be, so this answers at once."""
        return len(self.node_ids()) >= count

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """Relay one protocol step to nodes and collect their answers.

        Sends ``payloads[node]`` to each node's handler for ``step`` (e.g.
        ``"secagg/share"``; ``NodeRunner.exchange`` on the node) and yields exactly one
        outcome per node, in any order, with the same deadline rules as ``fit``. Only
        runs that need it call it (secure aggregation, ``runtime/secure.py``); by
        default a pool cannot, and says so with :class:`ConfigError`.
        """
        raise ConfigError(f"{type(self).__name__} cannot relay protocol messages ({step}); "
                          f"secure aggregation needs a backend that can")
