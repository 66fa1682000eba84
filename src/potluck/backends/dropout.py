"""Simulation only: make a seeded fraction of a round's nodes drop out of secure aggregation.

``at = "masked-input"``: the chosen nodes shared their keys but their masked update
never arrives (the fit yields ``NodeLeft``), so the server must rebuild their mask keys.
``at = "unmask"``: their masked update arrives, then they leave before the unmask step,
so their self-masks must be rebuilt from their neighbours' shares. The nodes are chosen
per attempt from ``(seed, session)``; ``round(fraction × nodes asked to fit)`` drop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from potluck.backends.wrapped import WrappedPool
from potluck.core.errors import NodeLeft
from potluck.core.messages import FitInstruction
from potluck.core.seeds import rng_for
from potluck.runtime.pool import ExchangeOutcome, FitOutcome, NodePool

WHEN = ("masked-input", "unmask")


class DropoutPool(WrappedPool):
    def __init__(self, pool: NodePool, fraction: float, at: str, seed: int) -> None:
        if not 0 <= fraction < 1 or at not in WHEN:
            raise ValueError(f"dropout: fraction in [0, 1) and at in {WHEN}, got {fraction!r}, {at!r}")
        super().__init__(pool)
        self.fraction, self.at, self.seed = fraction, at, seed
        self.dropped: set[str] = set()  # the current attempt's chosen nodes

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        nodes = sorted(ins.node_id for ins in instructions)
        session = str(instructions[0].config.get("update.secagg.session", "")) if instructions else ""
        chosen = rng_for(self.seed, "secagg-dropout", session).permutation(len(nodes))[: round(self.fraction * len(nodes))]
        self.dropped = {nodes[i] for i in chosen}
        for outcome in self.pool.fit(instructions, timeout):
            if self.at == "masked-input" and outcome.node_id in self.dropped:
                yield NodeLeft(outcome.node_id, "simulated dropout before its masked update was sent")
            else:
                yield outcome

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        dropping = self.dropped if step == "secagg/unmask" and self.at == "unmask" else set()
        kept = {node: p for node, p in payloads.items() if node not in dropping}
        for node in payloads:
            if node in dropping:
                yield NodeLeft(node, "simulated dropout after its masked update was sent")
        yield from self.pool.exchange(step, kept, timeout)
