"""The round loop: sample → instruct → collect with a deadline → aggregate → evaluate → commit.

One coordinator serves every backend through :class:`~potluck.runtime.pool.NodePool`.
Each attempt at a round is one pass of the collect loop (``runtime/collect.py``) into
a fold: the strategy's streaming aggregator, or secure aggregation's ring sum. Results
are folded in the order the nodes were sampled, so floating-point sums and therefore
model digests do not depend on which node finished first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np

from potluck.core.config import check_rules
from potluck.core.errors import BudgetExhausted, ConfigError, NodeError, RoundFailed
from potluck.core.messages import EvaluateInstruction, Scalar
from potluck.core.params import Params
from potluck.core.records import RoundProvenance, RoundRecord
from potluck.core.seeds import rng_for
from potluck.runtime.collect import AggregatorFold, AttemptOutcome, Collector, Fold
from potluck.runtime.logcontext import log_fields
from potluck.runtime.pool import NodePool
from potluck.runtime.secure import SecureAggregation
from potluck.strategies.base import Strategy
from potluck.tasks.protocol import LOSS_METRIC, EvalOutput, MetricSpec
from potluck.updates.pipeline import UpdatePipeline

Evaluator = Callable[[Params], EvalOutput]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPolicy:
    """How rounds are run. Times are seconds.

    ``fraction`` of available nodes is sampled, at least ``min_nodes``. A round commits
    when at least ``ceil(quorum × sampled)`` results were aggregated; otherwise it is
    retried (with a fresh sample) up to ``max_retries`` times, then the run fails.
    ``federated_eval_every``: evaluate on nodes every k rounds (0: only the last).
    """

    rounds: int = 30
    fraction: float = 1.0
    min_nodes: int = 1
    quorum: float = 0.5
    round_timeout: float = 600.0
    max_retries: int = 2
    federated_eval_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_rules(self, [
            ("rounds", self.rounds >= 1, "≥ 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("min_nodes", self.min_nodes >= 1, "≥ 1"),
            ("quorum", 0 < self.quorum <= 1, "in (0, 1]"),
            ("round_timeout", self.round_timeout > 0, "> 0"),
            ("max_retries", self.max_retries >= 0, "≥ 0"),
            ("federated_eval_every", self.federated_eval_every >= 0, "≥ 0"),
        ])


def sample_size(fraction: float, available: int, min_nodes: int = 1) -> int:
    """Nodes sampled from ``available``: ``ceil(fraction × available)``, at least
    ``min_nodes``, at most ``available``. The product is exact for the decimal the
    fraction was written as, so 0.07 of 100 nodes is 7 (not 8, as ``0.07 * 100`` =
    7.000000000000001 would give)."""
    exact = math.ceil(Fraction(repr(fraction)) * available)
    return min(available, max(min_nodes, exact))


class RoundGuard(Protocol):
    """An optional part of the run that may end it before a round and reports figures
    after each one (a privacy accountant: stop before ε exceeds the budget, report ε)."""

    def before_round(self, rnd: int) -> None:
        """Raise :class:`BudgetExhausted` if round ``rnd`` must not run."""

    def round_extras(self, rnd: int) -> Mapping[str, float]:
        """Figures for round ``rnd``'s record, once it has been aggregated."""


@dataclass(frozen=True)
class RoundDecision:
    """What a hook asks of the rounds after the one just committed.

    ``fit``: settings merged into the fit config of every later round (the same keys as
    ``-F``; a later hook wins on a key both set), so a hook can schedule ``lr``. ``stop``:
    a reason to end the run after this round; the run then ends as it does at its last
    round (committed, final model written) and the reason is kept in
    :attr:`Coordinator.stopped`. Raises ``ConfigError`` for a value that is not a scalar.
    """

    fit: Mapping[str, Scalar] = field(default_factory=dict)
    stop: str | None = None

    def __post_init__(self) -> None:
        bad = [k for k, v in self.fit.items() if not isinstance(k, str) or not isinstance(v, (bool, int, float, str))]
        if bad:
            raise ConfigError(f"a round decision's fit settings must map names to bool, int, float or str; "
                              f"{bad[0]!r} is {self.fit[bad[0]]!r}")
        if self.stop is not None and not (isinstance(self.stop, str) and self.stop):
            raise ConfigError(f"a round decision's stop must be a reason (non-empty text), got {self.stop!r}")
        object.__setattr__(self, "fit", dict(self.fit))  # the caller's dict may change later


class RoundHook(Protocol):
    """Called after each committed round (checkpointing, progress, metrics, schedules).
    The record carries the round's figures, including ``aggregate_seconds`` and its
    provenance. Returning a :class:`RoundDecision` changes later rounds' fit settings or
    stops the run; ``None`` changes nothing."""

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> RoundDecision | None:
        ...


class Coordinator:
    def __init__(
        self,
        pool: NodePool,
        strategy: Strategy,
        policy: RoundPolicy,
        *,
        fit_config: Mapping[str, Scalar] | None = None,
        evaluator: Evaluator | None = None,
        hooks: Sequence[RoundHook] = (),
        updates: UpdatePipeline | None = None,
        guards: Sequence[RoundGuard] = (),
        secure: SecureAggregation | None = None,
        metric: MetricSpec = LOSS_METRIC,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.pool, self.strategy, self.policy = pool, strategy, policy
        self.metric = metric  # the task's primary metric, named in each record
        self.fit_config = dict(fit_config or {})
        self.evaluator = evaluator
        self.hooks = list(hooks)
        self.updates = updates or UpdatePipeline(())
        self.guards = list(guards)
        self.secure = secure  # secure aggregation (runtime/secure.py): masked fits, summed in the ring
        self.clock = clock
        self.collector = Collector(pool, policy.round_timeout, policy.quorum, policy.seed, clock)
        self.stopped: str | None = None  # why the run ended before policy.rounds, if it did

    def run(self, params: Params, first_round: int = 1) -> Params:
        """Run rounds ``first_round`` … ``policy.rounds`` from ``params``; return the final model.

        A guard's :class:`BudgetExhausted`, or a hook's :class:`RoundDecision` with a
        ``stop``, ends the run cleanly after the last committed round (the reason is kept
        in :attr:`stopped`)."""
        for rnd in range(first_round, self.policy.rounds + 1):
            try:
                for guard in self.guards:
                    guard.before_round(rnd)
            except BudgetExhausted as exc:
                self.stopped = str(exc)
                log.info("stopping before round %d: %s", rnd, exc)  # a planned end: the caller reports it
                break
            with log_fields(round=rnd):  # every log line of the round names it
                params, record = self.run_round(rnd, params)
                stop = self._after_commit(record, params)
                if stop is not None and rnd < self.policy.rounds:
                    self.stopped = stop
                    log.info("stopping after round %d: %s", rnd, stop)
                    break
        return params

    def _after_commit(self, record: RoundRecord, params: Params) -> str | None:
        """Call every hook in order and apply their fit settings; why they ask to stop, if one does."""
        stops: list[str] = []
        for hook in self.hooks:
            decision = hook.on_commit(record, params, self.strategy)
            if decision is None:
                continue
            if decision.fit:
                log.info("fit settings from round %d on: %s", record.round + 1, dict(decision.fit))
                self.fit_config.update(decision.fit)
            if decision.stop:
                stops.append(decision.stop)
        return "; ".join(stops) if stops else None

    def run_round(self, rnd: int, params: Params) -> tuple[Params, RoundRecord]:
        """Attempt round ``rnd`` until one attempt commits; the new model and its record.

        Raises :class:`RoundFailed` after ``max_retries + 1`` attempts, naming for each
        why it failed and the first failure of each kind with its cause."""
        started = self.clock()
        tries: list[AttemptOutcome] = []
        for attempt in range(1, self.policy.max_retries + 2):
            outcome = self.attempt(rnd, attempt, params)
            tries.append(outcome)
            if outcome.aggregate is not None:
                return self._conclude(params, outcome.aggregate, tries, started)
            log.warning("round %d, attempt %d failed: %s", rnd, attempt, outcome.error)
        raise RoundFailed(f"round {rnd} failed after {len(tries)} attempts: "
                          + "; ".join(f"attempt {t.attempt}: {t.error}" for t in tries))

    def attempt(self, rnd: int, attempt: int, params: Params) -> AttemptOutcome:
        """One attempt at round ``rnd``: sample, instruct, collect into this run's fold."""
        sampled = self.sample(rnd, attempt)
        if not sampled:
            why = f"only {len(self.pool.node_ids())} nodes available, min_nodes is {self.policy.min_nodes}"
            return AttemptOutcome(rnd, attempt, (), None, why)
        config = {**self.fit_config, **self.strategy.fit_config(rnd), **self.updates.to_config()}
        fold: Fold
        if self.secure is not None:
            fold = self.secure.fold(self.pool, rnd, attempt, params.schema, self.policy.round_timeout)
        else:
            fold = AggregatorFold(self.strategy.new_aggregator(params), self.updates, params.schema)
        return self.collector.collect(rnd, attempt, params, sampled, config, fold)

    def _conclude(self, params: Params, aggregate: Params, tries: Sequence[AttemptOutcome],
                  started: float) -> tuple[Params, RoundRecord]:
        """The server step, evaluation and the record of a round whose last try committed."""
        done = tries[-1]
        rnd = done.round
        stepping = self.clock()
        new_params = self.strategy.apply(params, aggregate)
        aggregating = sum(t.folding_seconds for t in tries) + self.clock() - stepping
        extras: dict[str, float] = {}
        for guard in self.guards:
            extras.update(guard.round_extras(rnd))
        central = self.evaluator(new_params).as_dict() if self.evaluator else {}
        federated = self._federated_eval(rnd, new_params)
        absent = tuple(a for t in tries for a in t.absent)  # every attempt's, for the ledger
        record = RoundRecord(
            round=rnd,
            num_nodes=len(done.contributions),
            sampled=len(done.sampled),
            seconds=self.clock() - started,
            model_digest=new_params.digest,
            metrics={name: float(value) for name, value in central.items()},
            federated_metrics=federated,
            metric=self.metric.name,
            higher_is_better=self.metric.higher_is_better,
            attempts=done.attempt,
            num_examples=done.examples,
            train_loss=done.train_loss,
            failures=done.failure_counts(),
            bytes_up=done.bytes_up,
            extras=extras,
            failure_causes=tuple(f for t in tries for f in t.failures),  # every attempt's
            provenance=RoundProvenance(done.settings_digest, done.contributions, absent),
            aggregate_seconds=aggregating,
        )
        return new_params, record

    def sample(self, rnd: int, attempt: int = 1) -> list[str]:
        """The nodes asked to train in this round: seeded by (seed, round, attempt)."""
        p = self.policy
        available = list(self.pool.node_ids())
        if len(available) < p.min_nodes:  # deployed pools: nodes may still be joining
            self.pool.wait_for_nodes(p.min_nodes, p.round_timeout)
            available = list(self.pool.node_ids())
        if len(available) < p.min_nodes:
            return []
        want = sample_size(p.fraction, len(available), p.min_nodes)
        chosen = rng_for(p.seed, "sample", rnd, attempt).choice(len(available), want, replace=False)
        return [available[i] for i in np.sort(chosen)]

    def _federated_eval(self, rnd: int, params: Params) -> dict[str, float]:
        """Every metric the nodes report on their validation splits, ``loss`` included, each
        the mean of the nodes' values weighted by their examples; empty on rounds without
        federated evaluation or when no node evaluated any example."""
        every = self.policy.federated_eval_every
        due = rnd == self.policy.rounds or (every > 0 and rnd % every == 0)
        if not due:
            return {}
        instructions = [EvaluateInstruction(rnd, node, params) for node in self.pool.node_ids()]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for outcome in self.pool.evaluate(instructions, self.policy.round_timeout):
            if isinstance(outcome, NodeError) or outcome.num_examples == 0:
                continue
            for name, value in {"loss": outcome.loss, **outcome.metrics}.items():
                sums[name] = sums.get(name, 0.0) + float(value) * outcome.num_examples
                counts[name] = counts.get(name, 0) + outcome.num_examples
        return {name: sums[name] / counts[name] for name in sums}
