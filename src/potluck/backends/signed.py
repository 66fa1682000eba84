"""Simulation only: virtual nodes sign their updates, so simulated runs keep a ledger too.

A real node signs with its own key before its update leaves the machine. A virtual
node has no machine and no secret: :class:`SignedPool` signs each result as it leaves
the pool behind it, with a key derived from the run seed
(:func:`potluck.ledger.signing.derived_key`). The ledger then has the same shape in
simulation and deployment, and ``potluck ledger verify`` checks it the same way; but
anyone who knows the seed can make such signatures, so they prove nothing about who
trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

from potluck.backends.wrapped import WrappedPool
from potluck.core.messages import FitInstruction, FitResult
from potluck.ledger.signing import SigningKey, derived_key, sign_update
from potluck.runtime.pool import FitOutcome, NodePool


class SignedPool(WrappedPool):
    """A NodePool whose fit results carry each virtual node's signature.

    ``run_id`` is read when a result is signed (a resumed run learns it from its ledger).
    """

    def __init__(self, pool: NodePool, seed: int, run_id: Callable[[], str]) -> None:
        super().__init__(pool)
        self.seed, self.run_id = seed, run_id
        self._keys: dict[str, SigningKey] = {}

    def key(self, node_id: str) -> SigningKey:
        if node_id not in self._keys:
            self._keys[node_id] = derived_key(self.seed, f"node:{node_id}")
        return self._keys[node_id]

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        configs = {ins.node_id: ins.config for ins in instructions}
        for outcome in self.pool.fit(instructions, timeout):
            if isinstance(outcome, FitResult) and outcome.node_id in configs:
                signature = sign_update(self.key(outcome.node_id), self.run_id(), outcome.round, outcome.params,
                                        outcome.num_examples, configs[outcome.node_id])
                outcome = dataclasses.replace(outcome, signature=signature)
            yield outcome
