"""``simulate``: a federation of virtual nodes on this machine, from a SimulationConfig."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from potluck.apps.provenance import attach_simulation_ledger
from potluck.apps.run import assemble_run, make_protected_strategy
from potluck.backends.dropout import DropoutPool
from potluck.backends.inprocess import InProcessPool
from potluck.backends.process_pool import ProcessPool
from potluck.backends.ray_pool import RayPool
from potluck.backends.signed import SignedPool
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError, RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.runtime.coordinator import RoundHook, sample_size
from potluck.runtime.federation import Federation, FederationSpec, build_federation
from potluck.runtime.logcontext import set_process_log_fields
from potluck.runtime.pool import NodePool
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.base import Strategy
from potluck.tasks.protocol import metric_of

log = logging.getLogger(__name__)

@dataclass
class SimulationResult:
    run_dir: Path
    final_params: Params
    records: list[RoundRecord]
    resumed_from: int
    stopped: str | None = None  # why the run ended before config.rounds (a privacy budget), if it did


def default_run_dir(config: SimulationConfig, root: Path = Path("runs")) -> Path:
    """A new folder ``runs/<time>-<task>`` (see :func:`new_run_dir`)."""
    return new_run_dir(config.task, root)


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """A new folder ``root/<time>-<name>``, claimed by creating it: a run started in the
    same second as another (in this process or any other) gets ``…-2``, ``…-3``, …"""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{name.replace(':', '-').replace('/', '-')}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from exc
        return path
    raise RunDirError(f"{root}: no free run directory name for {base}")  # pragma: no cover


def federation_spec(config: SimulationConfig) -> FederationSpec:
    """The virtual federation: each of the spec's fields is the setting of the same name
    (checked by tests/core/test_config_sections.py)."""
    return FederationSpec(**{f.name: getattr(config, f.name) for f in fields(FederationSpec) if hasattr(config, f.name)})


def make_pool(config: SimulationConfig, federation: Federation) -> NodePool:
    pool: NodePool
    if config.backend == "ray":  # imports Ray here, or refuses with ConfigError; starts it at the first round
        pool = RayPool(federation.spec, list(federation.nodes), address=config.ray_address,
                       actors=config.workers if config.workers > 1 else None, node_cpus=config.node_cpus,
                       node_gpus=config.node_gpus)
    elif config.workers == 1:
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
    _check_round_size(config, make_protected_strategy(config))
    federation = build_federation(federation_spec(config))
    nodes = make_pool(config, federation)  # before the run directory: a backend that cannot be used refuses first
    check = getattr(federation.task, "check_fit_config", None)
    if check is not None:
        check(config.fit)
    # Claimed once the settings, task and data are known good: a failed start leaves no folder.
    config = config.replace(run_dir=str(RunDirectory(Path(config.run_dir or default_run_dir(config))).path))
    run = assemble_run(config, federation.initial_params,
                       lambda run_dir, start: attach_simulation_ledger(run_dir, config.seed, start),
                       resume=resume, simulation=True)
    test = federation.test
    evaluator = (lambda p: federation.task.evaluate(p, test)) if len(test) else None
    set_process_log_fields(run_id=run.run_dir.path.name)
    monitor = run.monitor(run.run_dir.path.name)
    pool = SignedPool(nodes, config.seed, lambda: run.ledger.run_id)  # simulation-only keys
    completed = False
    try:
        if monitor is not None:
            log.info("metrics at %s", monitor.serve())
        coordinator = run.coordinator(pool, evaluator, [*hooks, *([monitor.run] if monitor else [])],
                                      metric_of(federation.task))
        final = coordinator.run(run.params, run.first_round)
        completed = True
    finally:
        pool.close()
        if monitor is not None:
            monitor.close(wait_for_final_scrape=completed)
    records = run.finish(final, f"potluck simulate: {config.task}, {config.strategy}")
    return SimulationResult(run.run_dir.path, final, records, run.first_round - 1, coordinator.stopped)


def _check_round_size(config: SimulationConfig, strategy: Strategy) -> None:
    """ConfigError when a round samples fewer nodes than the strategy needs (Krum: 2f + 3)."""
    need = strategy.min_updates
    sampled = sample_size(config.fraction, config.nodes, config.min_nodes)
    if sampled < need:
        raise ConfigError(f"strategy {config.strategy} with options {config.strategy_options} needs at least {need} "
                          f"updates per round, but a round samples {sampled} of {config.nodes} nodes")
