"""``simulate``: a federation of virtual nodes on this machine, from a SimulationConfig."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.apps.protections import protect_strategy, round_guards, secure_aggregation, update_pipeline
from potluck.apps.provenance import attach_simulation_ledger, run_start
from potluck.apps.run import open_run
from potluck.backends.dropout import DropoutPool
from potluck.backends.inprocess import InProcessPool
from potluck.backends.process_pool import ProcessPool
from potluck.backends.signed import SignedPool
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError, RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.observability.report import write_report
from potluck.runtime.coordinator import Coordinator, RoundHook, RoundPolicy
from potluck.runtime.federation import Federation, FederationSpec, build_federation
from potluck.runtime.logcontext import set_process_log_fields
from potluck.runtime.pool import NodePool
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.registry import make_strategy

log = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("rounds", "workers", "run_dir", "round_timeout", "metrics_port", "metrics_host", "log_format",
                     "dp_epsilon_budget")


@dataclass
class SimulationResult:
    run_dir: Path
    final_params: Params
    records: list[RoundRecord]
    resumed_from: int
    stopped: str | None = None  # why the run ended before config.rounds (a privacy budget), if it did


def default_run_dir(config: SimulationConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.task.replace(':', '-')}"


def federation_spec(config: SimulationConfig) -> FederationSpec:
    return FederationSpec(
        task=config.task, data_path=config.data_path, nodes=config.nodes, partition=config.partition,
        alpha=config.alpha, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction,
        label_column=config.label_column, group_column=config.group_column,
        attack=config.attack, attack_fraction=config.attack_fraction, task_options=dict(config.fit),
    )


def round_policy(config: SimulationConfig) -> RoundPolicy:
    return RoundPolicy(
        rounds=config.rounds, fraction=config.fraction, min_nodes=config.min_nodes, quorum=config.quorum,
        round_timeout=config.round_timeout, max_retries=config.max_retries,
        federated_eval_every=config.federated_eval_every, seed=config.seed,
    )


def make_pool(config: SimulationConfig, federation: Federation) -> NodePool:
    pool: NodePool
    if config.workers == 1:
        pool = InProcessPool(federation.task, federation.nodes, attacks=federation.attacks)
    else:
        pool = ProcessPool(federation.spec, list(federation.nodes), config.workers or None)
    if config.secagg_dropout > 0:  # simulated dropouts during secure aggregation
        pool = DropoutPool(pool, config.secagg_dropout, config.secagg_dropout_at, config.seed)
    return pool


def run_simulation(
    config: SimulationConfig, *, resume: bool = False, hooks: Sequence[RoundHook] = ()
) -> SimulationResult:
    """Run (or resume) a simulation; everything durable goes to the run directory.

    Raises ``ConfigError``, ``DataError``, ``TaskError``, ``RunDirError`` or
    ``RoundFailed`` with a one-line reason.
    """
    if resume and config.run_dir is None:
        raise ConfigError("--resume needs the --run-dir of the run to continue")
    run_dir = RunDirectory(Path(config.run_dir) if config.run_dir else default_run_dir(config))
    config = config.replace(run_dir=str(run_dir.path))
    strategy = protect_strategy(config, make_strategy(config.strategy, config.strategy_options))
    _check_round_size(config, strategy)
    federation = build_federation(federation_spec(config))
    check = getattr(federation.task, "check_fit_config", None)
    if check is not None:
        check(config.fit)
    update_pipeline(config).wire_schema(federation.initial_params.schema)  # stages that cannot encode this model: ConfigError now

    if resume:
        _check_same_run(run_dir, config)
    ledger = attach_simulation_ledger(run_dir, config.seed, run_start(
        task=config.task, initial=federation.initial_params, strategy=config.strategy,
        strategy_options=config.strategy_options, updates=update_pipeline(config), config_toml=config.to_toml(),
        simulation=True))
    params, first_round = open_run(run_dir, config.to_toml(), federation.initial_params, strategy, resume=resume)

    test = federation.test
    evaluator = (lambda p: federation.task.evaluate(p, test)) if len(test) else None
    set_process_log_fields(run_id=run_dir.path.name)
    monitor = _monitor(config, run_dir.path.name, first_round)
    pool = SignedPool(make_pool(config, federation), config.seed, lambda: ledger.run_id)  # simulation-only keys
    completed = False
    try:
        if monitor is not None:
            log.info("metrics at %s", monitor.serve())
        coordinator = Coordinator(
            pool, strategy, round_policy(config), fit_config=config.fit, evaluator=evaluator,
            hooks=[run_dir, *hooks, *([monitor.run] if monitor else [])], updates=update_pipeline(config), guards=round_guards(config),
            secure=secure_aggregation(config),
        )
        final = coordinator.run(params, first_round)
        completed = True
    finally:
        pool.close()
        if monitor is not None:
            monitor.close(wait_for_final_scrape=completed)
    run_dir.write_final(final)
    records = run_dir.records()
    write_report(records, run_dir.path / "report.png", title=f"potluck simulate: {config.task}, {config.strategy}")
    return SimulationResult(run_dir.path, final, records, first_round - 1, coordinator.stopped)


def _monitor(config: SimulationConfig, run_id: str, first_round: int) -> Any:
    """Round metrics served at ``metrics_host:metrics_port``, or None when that is off (the default)."""
    if config.metrics_port is None:
        return None
    from potluck.observability.metrics import RunMonitor  # prometheus_client only when asked for

    return RunMonitor(run_id, rounds=config.rounds, first_round=first_round,
                      host=config.metrics_host, port=config.metrics_port)


def _check_round_size(config: SimulationConfig, strategy: Any) -> None:
    """ConfigError when a round samples fewer nodes than the strategy needs (Krum: 2f + 3)."""
    need = getattr(strategy, "min_updates", 1)
    sampled = min(config.nodes, max(config.min_nodes, math.ceil(config.fraction * config.nodes)))
    if sampled < need:
        raise ConfigError(f"strategy {config.strategy} with options {config.strategy_options} needs at least {need} "
                          f"updates per round, but a round samples {sampled} of {config.nodes} nodes")


def _check_same_run(run_dir: RunDirectory, config: SimulationConfig) -> None:
    run_dir.read_config()  # RunDirError when there is no run here
    stored = SimulationConfig.load(run_dir.config_file)
    differ = [
        name for name in stored.__dataclass_fields__
        if name not in RESUMABLE_CHANGES and getattr(stored, name) != getattr(config, name)
    ]
    if differ:
        raise RunDirError(
            f"{run_dir.path} was started with other settings ({', '.join(differ)}); "
            "resume with the same settings (only rounds, workers and round_timeout may change)"
        )
