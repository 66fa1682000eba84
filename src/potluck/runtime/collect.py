"""One attempt at a round: instruct the sampled nodes, collect with a deadline, fold.

Every attempt, plain or under secure aggregation, goes through :meth:`Collector.collect`:
the same checks on each outcome, the same failure bookkeeping, the same quorum. What
differs is the *fold* the usable results go into (:class:`Fold`): the strategy's
streaming aggregator (:class:`AggregatorFold`), or the ring sum of secure aggregation
with its protocol steps before and after the fit (``runtime/secure.SecureFold``).

Results reach the fold in the order the nodes were sampled (:class:`ReorderBuffer`
holds early arrivals), so floating-point sums, and therefore model digests, do not
depend on which node finished first. The attempt's outcome is a frozen
:class:`AttemptOutcome` the coordinator turns into the round's record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from potluck.core.digests import settings_digest, update_digest
from potluck.core.errors import NodeError, NodeLeft, NodeResultInvalid, NodeTimedOut, ParamsError, StrategyError
from potluck.core.messages import FitInstruction, FitResult, Scalar
from potluck.core.params import Params, SchemaEntry
from potluck.core.records import Contribution, Failure
from potluck.core.seeds import derive_seed
from potluck.runtime.pool import FitOutcome, NodePool
from potluck.strategies.base import Aggregator
from potluck.updates.pipeline import UpdatePipeline

Schema = tuple[SchemaEntry, ...]
MAX_CAUSE = 300  # characters of a cause kept: a record line and an error message stay readable
log = logging.getLogger(__name__)


class Fold(Protocol):
    """Where one attempt's usable results go, one at a time, in sampled order."""

    def setup(self, sampled: Sequence[str]) -> tuple[list[str], list[Failure]]:
        """Steps before the fit: the nodes to instruct (in sampled order) and those that
        dropped out on the way. Raises ``StrategyError`` when the attempt cannot go on."""
        ...

    def fit_config(self) -> Mapping[str, Scalar]:
        """Settings this fold adds to every node's fit config (after :meth:`setup`)."""
        ...

    def add(self, result: FitResult) -> None:
        """Fold one result in; ``ParamsError`` refuses it and leaves the fold unchanged."""
        ...

    def finish(self) -> Params:
        """The aggregate (a delta) of what was added; ``StrategyError`` when it cannot be made."""
        ...


class AggregatorFold:
    """The plain fold: each update decoded by the update pipeline (decompressed), then
    added to the strategy's aggregator weighted by its number of examples."""

    def __init__(self, aggregator: Aggregator, updates: UpdatePipeline, schema: Schema) -> None:
        self.aggregator, self.updates, self.schema = aggregator, updates, schema

    def setup(self, sampled: Sequence[str]) -> tuple[list[str], list[Failure]]:
        return list(sampled), []

    def fit_config(self) -> Mapping[str, Scalar]:
        return {}

    def add(self, result: FitResult) -> None:
        update = self.updates.decode(result.params, self.schema) if self.updates else result.params
        self.aggregator.add(update, float(result.num_examples))

    def finish(self) -> Params:
        return self.aggregator.result()


def failure_kind(error: NodeError) -> str:
    """The bucket a node error is counted in: ``failed``, ``timed_out``, ``left`` or ``rejected``."""
    if isinstance(error, NodeResultInvalid):
        return "rejected"  # its result came and was refused (a bad signature, NaN/Inf): as the coordinator's own refusals
    return "left" if isinstance(error, NodeLeft) else "timed_out" if isinstance(error, NodeTimedOut) else "failed"


def failure(node_id: str, kind: str, cause: str) -> Failure:
    """A :class:`Failure` whose cause is cut to :data:`MAX_CAUSE` characters."""
    return Failure(node_id, kind, cause if len(cause) <= MAX_CAUSE else cause[:MAX_CAUSE - 1] + "…")


def describe(failures: Sequence[Failure]) -> str:
    """Each kind of failure with its count and its first occurrence, e.g.
    ``3 failed, first node-003: fit raised RuntimeError: …; 1 timed_out, first node-007: …``."""
    first: dict[str, Failure] = {}
    counts: dict[str, int] = {}
    for f in failures:
        first.setdefault(f.kind, f)
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return "; ".join(f"{counts[kind]} {kind}, first {f}" for kind, f in first.items())


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt at a round produced.

    ``aggregate`` is None when the attempt did not commit; ``error`` then says why and
    names the first failure of each kind with its cause. ``contributions`` are the
    folded updates in sampled order; ``failures`` every result not aggregated, in the
    order they happened; ``absent`` the sampled nodes whose update is not in the
    aggregate, with the reason (``discarded``: folded in an attempt that did not
    commit), for the ledger. ``folding_seconds`` is the time spent in the fold.
    """

    round: int
    attempt: int
    sampled: tuple[str, ...]
    aggregate: Params | None
    error: str = ""
    settings_digest: str = ""
    contributions: tuple[Contribution, ...] = ()
    failures: tuple[Failure, ...] = ()
    absent: tuple[tuple[str, str], ...] = ()
    examples: int = 0
    train_loss: float = math.nan
    bytes_up: int = 0
    folding_seconds: float = 0.0

    def failure_counts(self) -> dict[str, int]:
        """Failures by kind, in the order each kind first happened."""
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return counts


class ReorderBuffer:
    """Releases results in the order the nodes were asked, whatever order they arrive in.

    Each node is answered once: :meth:`put` its result, or None when it has none.
    """

    def __init__(self, order: Sequence[str]) -> None:
        self._order = list(order)
        self._held: dict[str, FitResult | None] = {}
        self._answered: set[str] = set()
        self._next = 0

    def expects(self, node: str) -> bool:
        """Whether ``node`` was asked and has not answered yet."""
        return node not in self._answered and node in self._order

    def put(self, node: str, result: FitResult | None) -> Iterator[FitResult]:
        """Record ``node``'s answer; yield every result now due, in order."""
        self._answered.add(node)
        self._held[node] = result
        while self._next < len(self._order) and self._order[self._next] in self._held:
            released = self._held.pop(self._order[self._next])
            self._next += 1
            if released is not None:
                yield released

    def unanswered(self) -> list[str]:
        return [node for node in self._order if node not in self._answered]


class _Tally:
    """The running counts of one attempt (local to :meth:`Collector.collect`)."""

    def __init__(self, rnd: int, attempt: int, sampled: Sequence[str], clock: Callable[[], float]) -> None:
        self.rnd, self.attempt, self.sampled, self.clock = rnd, attempt, tuple(sampled), clock
        self.failures: list[Failure] = []
        self.absent: list[tuple[str, str]] = []
        self.folded: list[FitResult] = []
        self.contributions: list[Contribution] = []
        self.seconds = 0.0

    def fail(self, f: Failure, *, absent: bool = True) -> None:
        """Count a failure; ``absent``: a sampled node whose update is not aggregated."""
        self.failures.append(dataclasses.replace(f, attempt=self.attempt))
        if absent:
            self.absent.append((f.node_id, f.kind))

    def usable(self, outcome: FitOutcome) -> FitResult | None:
        """The result, or None after counting why it cannot be used."""
        if isinstance(outcome, NodeError):
            self.fail(failure(outcome.node_id, failure_kind(outcome), outcome.reason))
        elif outcome.round != self.rnd:
            self.fail(failure(outcome.node_id, "rejected", f"a result for round {outcome.round}, not {self.rnd}"))
        elif outcome.num_examples <= 0:
            self.fail(failure(outcome.node_id, "rejected", f"a result of {outcome.num_examples} examples"))
        else:
            return outcome
        return None

    def fold(self, fold: Fold, result: FitResult) -> None:
        started = self.clock()
        try:
            fold.add(result)
        except ParamsError as exc:
            log.warning("round %d: update from %s refused: %s", self.rnd, result.node_id, exc)
            self.fail(failure(result.node_id, "rejected", f"update refused: {exc}"))
            return
        finally:
            self.seconds += self.clock() - started
        self.folded.append(result)
        self.contributions.append(contribution(result))

    def missed(self, why: str) -> AttemptOutcome:
        """The outcome of an attempt that did not commit: its folded updates are discarded."""
        self.absent.extend((c.node_id, "discarded") for c in self.contributions)
        causes = describe(self.failures)
        return AttemptOutcome(self.rnd, self.attempt, self.sampled, None, f"{why} ({causes})" if causes else why,
                              failures=tuple(self.failures), absent=tuple(self.absent), folding_seconds=self.seconds)

    def done(self, aggregate: Params, config: Mapping[str, Scalar]) -> AttemptOutcome:
        examples, loss_sum = 0, 0.0
        for r in self.folded:  # in sampled order, so the mean loss does not depend on arrival either
            examples += r.num_examples
            loss_sum += float(r.metrics.get("train_loss", math.nan)) * r.num_examples
        return AttemptOutcome(
            self.rnd, self.attempt, self.sampled, aggregate, settings_digest=settings_digest(config),
            contributions=tuple(self.contributions), failures=tuple(self.failures), absent=tuple(self.absent),
            examples=examples, train_loss=loss_sum / examples,
            bytes_up=sum(r.params.encoded_size for r in self.folded), folding_seconds=self.seconds,
        )


@dataclass(frozen=True)
class Collector:
    """Runs attempts against ``pool``: fits due within ``timeout`` seconds, an attempt
    commits with ``ceil(quorum × sampled)`` folded results, node seeds derive from ``seed``."""

    pool: NodePool
    timeout: float
    quorum: float
    seed: int
    clock: Callable[[], float]

    def collect(self, rnd: int, attempt: int, params: Params, sampled: Sequence[str],
                config: Mapping[str, Scalar], fold: Fold) -> AttemptOutcome:
        """Set ``fold`` up, instruct the nodes it keeps, fold their results in sampled order,
        check the quorum, finish the fold."""
        tally = _Tally(rnd, attempt, sampled, self.clock)
        try:
            asked, dropped = fold.setup(sampled)
        except StrategyError as exc:
            return tally.missed(str(exc))
        for f in dropped:
            tally.fail(f)
        config = {**config, **fold.fit_config()}
        instructions = [FitInstruction(rnd, node, params, config, derive_seed(self.seed, "fit", rnd, attempt, node))
                        for node in asked]
        buffer = ReorderBuffer(asked)
        for outcome in self.pool.fit(instructions, self.timeout):
            node = outcome.node_id
            if not buffer.expects(node):
                why = "a second result" if node in asked else "a result nobody asked for"
                tally.fail(failure(node, "rejected", why), absent=False)
                continue
            for result in buffer.put(node, tally.usable(outcome)):
                tally.fold(fold, result)
        for node in buffer.unanswered():  # a pool that broke its contract: one outcome per instruction
            tally.fail(failure(node, "failed", "the pool ended without an outcome for it"))
            for result in buffer.put(node, None):
                tally.fold(fold, result)
        return self._finish(tally, fold, len(sampled), config)

    def _finish(self, tally: _Tally, fold: Fold, sampled: int, config: Mapping[str, Scalar]) -> AttemptOutcome:
        needed = max(1, math.ceil(self.quorum * sampled))
        if len(tally.folded) < needed:
            return tally.missed(f"{len(tally.folded)} of {sampled} results usable, quorum needs {needed}")
        started = self.clock()
        try:
            aggregate = fold.finish()
        except StrategyError as exc:
            return tally.missed(str(exc))
        finally:
            tally.seconds += self.clock() - started
        return tally.done(aggregate, config)


def contribution(result: FitResult) -> Contribution:
    """What the ledger records of an aggregated update (the digest of it as sent)."""
    signed = result.signature
    return Contribution(result.node_id, update_digest(result.params), result.num_examples,
                        signed.public_key.hex() if signed else "", signed.signature.hex() if signed else "")
