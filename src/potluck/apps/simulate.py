"""``simulate``: a federation of virtual nodes on this machine, from a SimulationConfig."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from potluck.apps.protections import round_guards, update_pipeline
from potluck.apps.run import open_run
from potluck.backends.inprocess import InProcessPool
from potluck.backends.process_pool import ProcessPool
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError, RunDirError
from potluck.core.params import Params
from potluck.observability.report import write_report
from potluck.runtime.coordinator import Coordinator, RoundHook, RoundPolicy
from potluck.runtime.federation import Federation, FederationSpec, build_federation
from potluck.runtime.pool import NodePool
from potluck.runtime.records import RoundRecord
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.registry import make_strategy

# Settings that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("rounds", "workers", "run_dir", "round_timeout")


@dataclass
class SimulationResult:
    run_dir: Path
    final_params: Params
    records: list[RoundRecord]
    resumed_from: int


def default_run_dir(config: SimulationConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.task.replace(':', '-')}"


def federation_spec(config: SimulationConfig) -> FederationSpec:
    return FederationSpec(
        task=config.task, data_path=config.data_path, nodes=config.nodes, partition=config.partition,
        alpha=config.alpha, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction,
        label_column=config.label_column, group_column=config.group_column,
    )


def round_policy(config: SimulationConfig) -> RoundPolicy:
    return RoundPolicy(
        rounds=config.rounds, fraction=config.fraction, min_nodes=config.min_nodes, quorum=config.quorum,
        round_timeout=config.round_timeout, max_retries=config.max_retries,
        federated_eval_every=config.federated_eval_every, seed=config.seed,
    )


def make_pool(config: SimulationConfig, federation: Federation) -> NodePool:
    if config.workers == 1:
        return InProcessPool(federation.task, federation.nodes)
    return ProcessPool(federation.spec, list(federation.nodes), config.workers or None)


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
    strategy = make_strategy(config.strategy, config.strategy_options)
    federation = build_federation(federation_spec(config))
    check = getattr(federation.task, "check_fit_config", None)
    if check is not None:
        check(config.fit)

    if resume:
        _check_same_run(run_dir, config)
    params, first_round = open_run(run_dir, config.to_toml(), federation.initial_params, strategy, resume=resume)

    test = federation.test
    evaluator = (lambda p: federation.task.evaluate(p, test)) if len(test) else None
    pool = make_pool(config, federation)
    try:
        coordinator = Coordinator(
            pool, strategy, round_policy(config), fit_config=config.fit, evaluator=evaluator,
            hooks=[run_dir, *hooks], updates=update_pipeline(config), guards=round_guards(config),
        )
        final = coordinator.run(params, first_round)
    finally:
        pool.close()
    run_dir.write_final(final)
    records = run_dir.records()
    write_report(records, run_dir.path / "report.png", title=f"potluck simulate: {config.task}, {config.strategy}")
    return SimulationResult(run_dir.path, final, records, first_round - 1)


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
