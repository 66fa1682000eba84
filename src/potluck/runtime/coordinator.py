"""The round loop: sample → instruct → collect with a deadline → aggregate → evaluate → commit.

One coordinator serves every backend through :class:`~potluck.runtime.pool.NodePool`.
Results are folded into the strategy's streaming aggregator in the order the nodes
were sampled (a small reorder buffer holds early arrivals), so floating-point sums and
therefore model digests do not depend on which node finished first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from potluck.core.config import check_rules
from potluck.core.digests import settings_digest, update_digest
from potluck.core.errors import (
    BudgetExhausted,
    NodeError,
    ParamsError,
    RoundFailed,
    StrategyError,
)
from potluck.core.messages import EvaluateInstruction, FitInstruction, FitResult
from potluck.core.params import Params
from potluck.core.records import Contribution, RoundProvenance, RoundRecord
from potluck.core.seeds import derive_seed, rng_for
from potluck.runtime.logcontext import log_fields
from potluck.runtime.pool import NodePool
from potluck.runtime.secure import SecureAggregation, absence
from potluck.strategies.base import Strategy
from potluck.tasks.protocol import EvalOutput
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


class RoundGuard(Protocol):
    """An optional part of the run that may end it before a round and reports figures
    after each one (a privacy accountant: stop before ε exceeds the budget, report ε)."""

    def before_round(self, rnd: int) -> None:
        """Raise :class:`BudgetExhausted` if round ``rnd`` must not run."""

    def round_extras(self, rnd: int) -> Mapping[str, float]:
        """Figures for round ``rnd``'s record, once it has been aggregated."""


class RoundHook(Protocol):
    """Called after each committed round (checkpointing, progress, metrics).

    A hook may also define ``on_phase(round, phase, seconds)``: before the round
    commits it is called with ``"aggregate"`` and the seconds spent folding results in,
    finishing the aggregate and taking the server step (retried attempts included).
    """

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> None:
        ...


class Coordinator:
    def __init__(
        self,
        pool: NodePool,
        strategy: Strategy,
        policy: RoundPolicy,
        *,
        fit_config: dict[str, object] | None = None,
        evaluator: Evaluator | None = None,
        hooks: Sequence[RoundHook] = (),
        updates: UpdatePipeline | None = None,
        guards: Sequence[RoundGuard] = (),
        secure: SecureAggregation | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.pool, self.strategy, self.policy = pool, strategy, policy
        self.fit_config = dict(fit_config or {})
        self.evaluator = evaluator
        self.hooks = list(hooks)
        self.updates = updates or UpdatePipeline(())
        self.guards = list(guards)
        self.secure = secure  # secure aggregation (runtime/secure.py): masked fits, summed in the ring
        self.clock = clock
        self.stopped: str | None = None  # why the run ended before policy.rounds, if it did

    def run(self, params: Params, first_round: int = 1) -> Params:
        """Run rounds ``first_round`` … ``policy.rounds`` from ``params``; return the final model.

        A guard's :class:`BudgetExhausted` ends the run cleanly after the last committed
        round (the reason is kept in :attr:`stopped`)."""
        for rnd in range(first_round, self.policy.rounds + 1):
            try:
                for guard in self.guards:
                    guard.before_round(rnd)
            except BudgetExhausted as exc:
                self.stopped = str(exc)
                log.warning("stopping before round %d: %s", rnd, exc)
                break
            with log_fields(round=rnd):  # every log line of the round names it
                params, record = self.run_round(rnd, params)
                for hook in self.hooks:
                    hook.on_commit(record, params, self.strategy)
        return params

    def run_round(self, rnd: int, params: Params) -> tuple[Params, RoundRecord]:
        started = self.clock()
        reasons: list[str] = []
        self._aggregating = 0.0  # seconds, summed over attempts by _fit_round
        self._absent: list[tuple[str, str]] = []  # (node, reason), over attempts, for the ledger
        for attempt in range(1, self.policy.max_retries + 2):
            sampled = self.sample(rnd, attempt)
            outcome = self._fit_round(rnd, attempt, params, sampled)
            if isinstance(outcome, str):
                reasons.append(f"attempt {attempt}: {outcome}")
                continue
            aggregate, folded, examples, train_loss, failures, bytes_up = outcome
            stepping = self.clock()
            new_params = self.strategy.apply(params, aggregate)
            self._report_phase(rnd, "aggregate", self._aggregating + self.clock() - stepping)
            extras: dict[str, float] = {}
            for guard in self.guards:
                extras.update(guard.round_extras(rnd))
            central = self.evaluator(new_params) if self.evaluator else None
            fed_loss, fed_acc = self._federated_eval(rnd, new_params, sampled)
            record = RoundRecord(
                round=rnd,
                accuracy=float(central.metrics.get("accuracy", math.nan)) if central else math.nan,
                loss=central.loss if central else math.nan,
                num_nodes=folded,
                sampled=len(sampled),
                seconds=self.clock() - started,
                model_digest=new_params.digest,
                attempts=attempt,
                num_examples=examples,
                train_loss=train_loss,
                federated_accuracy=fed_acc,
                federated_loss=fed_loss,
                failures=failures,
                bytes_up=bytes_up,
                extras=extras,
                provenance=self._provenance,
            )
            return new_params, record
        raise RoundFailed(f"round {rnd} failed after {len(reasons)} attempts: " + "; ".join(reasons))

    def sample(self, rnd: int, attempt: int = 1) -> list[str]:
        """The nodes asked to train in this round: seeded by (seed, round, attempt)."""
        p = self.policy
        available = list(self.pool.node_ids())
        wait = getattr(self.pool, "wait_for_nodes", None)  # deployed pools: nodes may still be joining
        if len(available) < p.min_nodes and wait is not None:
            wait(p.min_nodes, p.round_timeout)
            available = list(self.pool.node_ids())
        want = max(p.min_nodes, math.ceil(p.fraction * len(available)))
        if len(available) < p.min_nodes:
            return []
        chosen = rng_for(p.seed, "sample", rnd, attempt).choice(len(available), min(want, len(available)), replace=False)
        return [available[i] for i in np.sort(chosen)]

    def _fit_round(self, rnd: int, attempt: int, params: Params, sampled: list[str]):  # type: ignore[no-untyped-def]
        if not sampled:
            return f"only {len(self.pool.node_ids())} nodes available, min_nodes is {self.policy.min_nodes}"
        config = {**self.fit_config, **self.strategy.fit_config(rnd), **self.updates.to_config()}
        if self.secure is not None:
            return self._secure_fit_round(rnd, attempt, params, sampled, config)
        instructions = [
            FitInstruction(rnd, node, params, config, derive_seed(self.policy.seed, "fit", rnd, attempt, node))
            for node in sampled
        ]
        aggregator = self.strategy.new_aggregator(params)
        failures: dict[str, int] = {}
        ready: dict[str, FitResult | None] = {}  # reorder buffer; None marks a failure
        position, examples, loss_sum, bytes_up = 0, 0, 0.0, 0

        contributions: list[Contribution] = []

        def fail(reason: str, node: str | None = None) -> None:
            failures[reason] = failures.get(reason, 0) + 1
            if node is not None:  # a sampled node whose update is not aggregated
                self._absent.append((node, reason))

        for outcome in self.pool.fit(instructions, self.policy.round_timeout):
            node = outcome.node_id
            if node not in sampled or node in ready:
                fail("rejected")  # a result nobody asked for, or a second one
                continue
            if isinstance(outcome, NodeError):
                fail(absence(outcome), node)
                ready[node] = None
            elif outcome.round != rnd or outcome.num_examples <= 0:
                fail("rejected", node)
                ready[node] = None
            else:
                ready[node] = outcome
            while position < len(sampled) and sampled[position] in ready:
                result = ready.pop(sampled[position])
                ready[sampled[position]] = None  # keep the key: a duplicate is still rejected
                position += 1
                if result is None:
                    continue
                folding = self.clock()
                try:
                    update = self.updates.decode(result.params, params.schema) if self.updates else result.params
                    aggregator.add(update, float(result.num_examples))
                except ParamsError as exc:
                    log.warning("round %d: update from %s refused: %s", rnd, result.node_id, exc)
                    fail("rejected", result.node_id)
                    continue
                finally:
                    self._aggregating += self.clock() - folding
                bytes_up += result.params.encoded_size
                contributions.append(_contribution(result))
                examples += result.num_examples
                loss_sum += float(result.metrics.get("train_loss", math.nan)) * result.num_examples
        needed = max(1, math.ceil(self.policy.quorum * len(sampled)))
        if aggregator.count < needed:
            self._absent.extend((c.node_id, "discarded") for c in contributions)
            return f"{aggregator.count} of {len(sampled)} results usable, quorum needs {needed} ({failures})"
        folding = self.clock()
        aggregate = aggregator.result()
        self._aggregating += self.clock() - folding
        self._provenance = RoundProvenance(settings_digest(config), tuple(contributions), tuple(self._absent))
        return aggregate, aggregator.count, examples, loss_sum / examples, failures, bytes_up

    def _secure_fit_round(self, rnd: int, attempt: int, params: Params, sampled: list[str], config: dict):  # type: ignore[no-untyped-def]
        """``_fit_round`` under secure aggregation: key agreement, masked fits summed in the
        ring (exactly, so arrival order does not matter), then unmasking."""
        secure, timeout = self.secure, self.policy.round_timeout
        assert secure is not None
        failures: dict[str, int] = {}

        def fail(reason: str, node: str | None = None) -> None:
            failures[reason] = failures.get(reason, 0) + 1
            if node is not None:
                self._absent.append((node, reason))

        try:
            ready, dropped = secure.setup(self.pool, rnd, attempt, sampled, timeout)
        except StrategyError as exc:
            return str(exc)
        for node, reason in dropped:
            fail(reason, node)
        config = {**config, **secure.fit_config()}
        instructions = [FitInstruction(rnd, node, params, config, derive_seed(self.policy.seed, "fit", rnd, attempt, node))
                        for node in ready]
        results: dict[str, FitResult] = {}
        for outcome in self.pool.fit(instructions, timeout):
            node = outcome.node_id
            if node not in ready or node in results:
                fail("rejected")
                continue
            if isinstance(outcome, NodeError):
                fail(absence(outcome), node)
            elif outcome.round != rnd or outcome.num_examples <= 0:
                fail("rejected", node)
            else:
                folding = self.clock()
                try:
                    secure.fold(outcome, params.schema)
                    results[node] = outcome
                except ParamsError as exc:
                    log.warning("round %d: masked update from %s refused: %s", rnd, node, exc)
                    fail("rejected", node)
                finally:
                    self._aggregating += self.clock() - folding
        kept = [results[node] for node in sampled if node in results]  # sampled order: sums do not depend on arrival
        needed = max(1, math.ceil(self.policy.quorum * len(sampled)))
        if len(kept) < needed:
            self._absent.extend((r.node_id, "discarded") for r in kept)
            return f"{len(kept)} of {len(sampled)} results usable, quorum needs {needed} ({failures})"
        folding = self.clock()
        try:
            aggregate = secure.finish(self.pool, params.schema, timeout)
        except StrategyError as exc:
            self._absent.extend((r.node_id, "discarded") for r in kept)
            return str(exc)
        finally:
            self._aggregating += self.clock() - folding
        examples = sum(r.num_examples for r in kept)
        loss = sum(float(r.metrics.get("train_loss", math.nan)) * r.num_examples for r in kept) / examples
        self._provenance = RoundProvenance(settings_digest(config), tuple(_contribution(r) for r in kept), tuple(self._absent))
        return aggregate, len(kept), examples, loss, failures, sum(r.params.encoded_size for r in kept)

    def _report_phase(self, rnd: int, phase: str, seconds: float) -> None:
        for hook in self.hooks:
            on_phase = getattr(hook, "on_phase", None)
            if on_phase is not None:
                on_phase(rnd, phase, seconds)

    def _federated_eval(self, rnd: int, params: Params, sampled: list[str]) -> tuple[float, float]:
        every = self.policy.federated_eval_every
        due = rnd == self.policy.rounds or (every > 0 and rnd % every == 0)
        if not due:
            return math.nan, math.nan
        nodes = list(self.pool.node_ids())
        instructions = [EvaluateInstruction(rnd, node, params) for node in nodes]
        loss_sum, correct, count = 0.0, 0.0, 0
        for outcome in self.pool.evaluate(instructions, self.policy.round_timeout):
            if isinstance(outcome, NodeError) or outcome.num_examples == 0:
                continue
            loss_sum += outcome.loss * outcome.num_examples
            correct += float(outcome.metrics.get("accuracy", math.nan)) * outcome.num_examples
            count += outcome.num_examples
        if count == 0:
            return math.nan, math.nan
        return loss_sum / count, correct / count


def _contribution(result: FitResult) -> Contribution:
    """What the ledger records of an aggregated update (the digest of it as sent)."""
    signed = result.signature
    return Contribution(result.node_id, update_digest(result.params), result.num_examples,
                        signed.public_key.hex() if signed else "", signed.signature.hex() if signed else "")
