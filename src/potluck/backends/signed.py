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
from collections.abc import Callable, Iterator, Mapping, Sequence

from potluck.core.messages import EvaluateInstruction, FitInstruction, FitResult
from potluck.ledger.signing import SigningKey, derived_key, sign_update
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, FitOutcome, NodePool


class SignedPool(NodePool):
    """A NodePool whose fit results carry each virtual node's signature.

    ``run_id`` is read when a result is signed (a resumed run learns it from its ledger).
    """

    def __init__(self, pool: NodePool, seed: int, run_id: Callable[[], str]) -> None:
        self.pool, self.seed, self.run_id = pool, seed, run_id
        self._keys: dict[str, SigningKey] = {}

    def key(self, node_id: str) -> SigningKey:
        if node_id not in self._keys:
            self._keys[node_id] = derived_key(self.seed, f"node:{node_id}")
        return self._keys[node_id]

    def node_ids(self) -> Sequence[str]:
        return self.pool.node_ids()

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        configs = {ins.node_id: ins.config for ins in instructions}
        for outcome in self.pool.fit(instructions, timeout):
            if isinstance(outcome, FitResult) and outcome.node_id in configs:
                signature = sign_update(self.key(outcome.node_id), self.run_id(), outcome.round, outcome.params,
                                        outcome.num_examples, configs[outcome.node_id])
                outcome = dataclasses.replace(outcome, signature=signature)
            yield outcome

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self.pool.evaluate(instructions, timeout)

    def close(self) -> None:
        self.pool.close()

    def wait_for_nodes(self, count: int, timeout: float) -> bool:
        return self.pool.wait_for_nodes(count, timeout)

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        return self.pool.exchange(step, payloads, timeout)

    def __getattr__(self, name: str) -> object:
        # Anything else a backend offers (worker stats, ...) passes through.
        return getattr(self.pool, name)
