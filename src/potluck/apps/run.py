"""What every app that runs rounds shares: one function assembles a run from its settings.

:func:`assemble_run` builds, the same way for ``simulate`` and ``server``: the strategy
with its protections, the update pipeline, the round guards and secure aggregation,
the round policy, the ledger, and the run directory (new, or resumed after the same
check for both: ``core.config.check_resume``). The app brings what differs: the
initial model, its ledger key, and its pool of nodes; :class:`AssembledRun` then makes
the monitor and the coordinator and finishes the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from potluck.apps.protections import RunConfig, protect_strategy, round_guards, secure_aggregation, update_pipeline
from potluck.apps.provenance import run_start
from potluck.apps.stop_at import StopAt
from potluck.core.config import check_resume
from potluck.core.errors import RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.ledger.chain import Ledger, RunStart
from potluck.observability.report import write_report
from potluck.runtime.coordinator import Coordinator, Evaluator, RoundGuard, RoundHook, RoundPolicy
from potluck.runtime.rundir import RunDirectory
from potluck.runtime.secure import SecureAggregation
from potluck.strategies.base import Strategy
from potluck.strategies.registry import make_strategy
from potluck.tasks.protocol import LOSS_METRIC, MetricSpec
from potluck.updates.pipeline import UpdatePipeline


def round_policy(config: RunConfig) -> RoundPolicy:
    """The coordinator's policy: each of its fields is the round setting of the same name
    (a field without a setting keeps its default; tests/core/test_config_sections.py
    asks that there be none)."""
    return RoundPolicy(**{f.name: getattr(config, f.name) for f in fields(RoundPolicy) if hasattr(config, f.name)})


def make_protected_strategy(config: RunConfig) -> Strategy:
    """The configured strategy, wrapped for differential privacy when ``dp`` asks."""
    return protect_strategy(config, make_strategy(config.strategy, config.strategy_options, config.server_opt))


@dataclass(frozen=True)
class AssembledRun:
    """Everything a run needs but its pool; ``params`` and ``first_round`` are where it starts."""

    config: RunConfig
    run_dir: RunDirectory
    strategy: Strategy
    updates: UpdatePipeline
    guards: list[RoundGuard]
    secure: SecureAggregation | None
    policy: RoundPolicy
    ledger: Ledger
    params: Params
    first_round: int

    def monitor(self, run_id: str, pool: Any = None) -> Any:
        """Round metrics (and the fleet's, given a ``pool``) served at ``metrics_host:metrics_port``,
        or None when that is off (the default)."""
        if self.config.metrics_port is None:
            return None
        from potluck.observability.metrics import RunMonitor  # prometheus_client only when asked for

        return RunMonitor(run_id, rounds=self.config.rounds, first_round=self.first_round, pool=pool,
                          host=self.config.metrics_host, port=self.config.metrics_port)

    def coordinator(self, pool: Any, evaluator: Evaluator | None, hooks: Sequence[RoundHook],
                    metric: MetricSpec = LOSS_METRIC) -> Coordinator:
        """The round loop over ``pool``; the run directory commits first, then ``hooks``
        (and ``--stop-at``'s watch, when set). ``metric`` is the task's primary metric
        (``tasks.protocol.metric_of``), named in each record."""
        guards, hooks = list(self.guards), [self.run_dir, *hooks]
        if self.config.stop_at is not None:
            stop = StopAt(self.config.stop_at)
            evaluator = stop.watch(evaluator)
            guards.append(stop)
            hooks.append(stop)
        return Coordinator(pool, self.strategy, self.policy, fit_config=self.config.fit, evaluator=evaluator,
                           hooks=hooks, updates=self.updates, guards=guards, secure=self.secure, metric=metric)

    def finish(self, final: Params, title: str) -> list[RoundRecord]:
        """Write the final model and the report; the committed rounds' records."""
        self.run_dir.write_final(final)
        records = self.run_dir.records()
        write_report(records, self.run_dir.path / "report.png", title=title)
        return records


def assemble_run(config: RunConfig, initial: Params, attach_ledger: Callable[[RunDirectory, RunStart], Ledger], *,
                 resume: bool, simulation: bool) -> AssembledRun:
    """Build a run's parts from ``config`` and open its run directory (``config.run_dir``).

    ``attach_ledger`` signs with the app's key (seed-derived in simulation, a key file on
    a server). Raises ConfigError for settings the model or strategy cannot honour and
    RunDirError for a resumed run whose settings changed where they may not.
    """
    run_dir = RunDirectory(Path(str(config.run_dir)))
    strategy = make_protected_strategy(config)
    updates = update_pipeline(config)
    updates.wire_schema(initial.schema)  # stages that cannot encode this model: ConfigError now
    if resume:
        run_dir.read_config()  # RunDirError when there is no run here
        check_resume(type(config).load(run_dir.config_file), config, run_dir.path)
    config_toml = config.to_toml()
    ledger = attach_ledger(run_dir, run_start(
        task=config.task, initial=initial, strategy=config.strategy, strategy_options=config.strategy_options,
        updates=update_pipeline(config), config_toml=config_toml, simulation=simulation))
    params, first_round = open_run(run_dir, config_toml, initial, strategy, resume=resume)
    run_dir.path.chmod(0o700)  # its checkpoints, ledger and keys are for its owner only (the server writes 0600)
    return AssembledRun(config, run_dir, strategy, updates, round_guards(config), secure_aggregation(config),
                        round_policy(config), ledger, params, first_round)


def open_run(run_dir: RunDirectory, config_toml: str, initial: Params, strategy: Strategy, *, resume: bool) -> tuple[Params, int]:
    """The model to start from and the first round to run.

    A new run writes its config and commits the initial model as round 0; so does a
    resumed run that was stopped before round 0 was committed. A resumed run drops
    anything written after its last committed round, restores that round's model and
    strategy state, and checks the initial model matches (the same task and seed).
    """
    if not resume or not run_dir.committed_rounds():
        run_dir.create(config_toml)
        record = RoundRecord(0, 0, 0, 0.0, initial.digest)
        run_dir.commit(record, initial, strategy.state())
        return initial, 1
    if run_dir.load(0).params.digest != initial.digest:  # checked before resume tidies anything
        raise RunDirError(f"{run_dir.path} was started from another initial model (other task or seed)")
    last = run_dir.prepare_resume()
    strategy.load_state(last.strategy_state)
    return last.params, last.round + 1
