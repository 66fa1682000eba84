"""A pool in front of another pool, for simulation's wrappers (dropout, signatures).

:class:`WrappedPool` passes every call through to the pool behind it; a wrapper
subclasses it and overrides only what it changes (``DropoutPool`` its fit and exchange,
``SignedPool`` its fit). Attributes the pool behind offers beyond :class:`NodePool`
(worker stats, ...) pass through too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, FitOutcome, NodePool


class WrappedPool(NodePool):
    """Every :class:`NodePool` call, and any other attribute, goes to ``pool``."""

    def __init__(self, pool: NodePool) -> None:
        self.pool = pool

    def node_ids(self) -> Sequence[str]:
        return self.pool.node_ids()

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        return self.pool.fit(instructions, timeout)

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self.pool.evaluate(instructions, timeout)

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        return self.pool.exchange(step, payloads, timeout)

    def close(self) -> None:
        self.pool.close()

    def wait_for_nodes(self, count: int, timeout: float) -> bool:
        return self.pool.wait_for_nodes(count, timeout)

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)
