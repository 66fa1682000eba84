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
from potluck.core.errors import BudgetExhausted, NodeError, NodeLeft, NodeTimedOut, ParamsError, RoundFailed
from potluck.core.messages import EvaluateInstruction, FitInstruction, FitResult
from potluck.core.params import Params
from potluck.core.seeds import derive_seed, rng_for
from potluck.runtime.pool import NodePool
from potluck.runtime.records import RoundRecord
from potluck.strategies.base import Strategy
from potluck.strategies.updates import UpdatePipeline
from potluck.tasks.protocol import EvalOutput

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
    """Called after each committed round (checkpointing, progress, metrics)."""

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
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.pool, self.strategy, self.policy = pool, strategy, policy
        self.fit_config = dict(fit_config or {})
        self.evaluator = evaluator
        self.hooks = list(hooks)
        self.updates = updates or UpdatePipeline(())
        self.guards = list(guards)
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
            params, record = self.run_round(rnd, params)
            for hook in self.hooks:
                hook.on_commit(record, params, self.strategy)
        return params

    def run_round(self, rnd: int, params: Params) -> tuple[Params, RoundRecord]:
        started = self.clock()
        reasons: list[str] = []
        for attempt in range(1, self.policy.max_retries + 2):
            sampled = self.sample(rnd, attempt)
            outcome = self._fit_round(rnd, attempt, params, sampled)
            if isinstance(outcome, str):
                reasons.append(f"attempt {attempt}: {outcome}")
                continue
            aggregate, folded, examples, train_loss, failures, bytes_up = outcome
            new_params = self.strategy.apply(params, aggregate)
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
        instructions = [
            FitInstruction(rnd, node, params, config, derive_seed(self.policy.seed, "fit", rnd, attempt, node))
            for node in sampled
        ]
        aggregator = self.strategy.new_aggregator(params)
        failures: dict[str, int] = {}
        ready: dict[str, FitResult | None] = {}  # reorder buffer; None marks a failure
        position, examples, loss_sum, bytes_up = 0, 0, 0.0, 0

        def fail(reason: str) -> None:
            failures[reason] = failures.get(reason, 0) + 1

        for outcome in self.pool.fit(instructions, self.policy.round_timeout):
            node = outcome.node_id
            if node not in sampled or node in ready:
                fail("rejected")  # a result nobody asked for, or a second one
                continue
            if isinstance(outcome, NodeError):
                fail("left" if isinstance(outcome, NodeLeft) else "timed_out" if isinstance(outcome, NodeTimedOut) else "failed")
                ready[node] = None
            elif outcome.round != rnd or outcome.num_examples <= 0:
                fail("rejected")
                ready[node] = None
            else:
                ready[node] = outcome
            while position < len(sampled) and sampled[position] in ready:
                result = ready.pop(sampled[position])
                ready[sampled[position]] = None  # keep the key: a duplicate is still rejected
                position += 1
                if result is None:
                    continue
                try:
                    update = self.updates.decode(result.params, params.schema) if self.updates else result.params
                    aggregator.add(update, float(result.num_examples))
                except ParamsError as exc:
                    log.warning("round %d: update from %s refused: %s", rnd, result.node_id, exc)
                    fail("rejected")
                    continue
                bytes_up += result.params.encoded_size
                examples += result.num_examples
                loss_sum += float(result.metrics.get("train_loss", math.nan)) * result.num_examples
        needed = max(1, math.ceil(self.policy.quorum * len(sampled)))
        if aggregator.count < needed:
            return f"{aggregator.count} of {len(sampled)} results usable, quorum needs {needed} ({failures})"
        return aggregator.result(), aggregator.count, examples, loss_sum / examples, failures, bytes_up

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
