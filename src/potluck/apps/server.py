"""``server``: one federated run served to real nodes over gRPC (mutual TLS by default).

The same coordinator and strategy as ``simulate``; the pool is a :class:`FleetPool`.
Started again with the same run directory, the server resumes after its last committed
round, and nodes rejoin by themselves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.apps.protections import protect_strategy, round_guards, secure_aggregation, update_pipeline
from potluck.apps.provenance import REGISTRY_NAME, attach_server_ledger, run_start, server_key_path
from potluck.apps.run import open_run
from potluck.backends.fleet import FleetPool
from potluck.core.config import ServerConfig
from potluck.core.errors import RoundFailed, RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.core.seeds import derive_seed
from potluck.ledger.signing import NodeKeys
from potluck.observability.report import write_report
from potluck.runtime.coordinator import Coordinator, RoundHook, RoundPolicy
from potluck.runtime.federation import stratified_split
from potluck.runtime.logcontext import set_process_log_fields
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.registry import make_strategy
from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo
from potluck.transport.certs import load_pem_bundle
from potluck.transport.server import ServerOptions, start_server

log = logging.getLogger(__name__)
MB = 2**20
FINISHED_RUN_WAIT = 65.0  # s: nodes retry at least every 30 s (their longest backoff), twice in this time


@dataclass
class ServerResult:
    run_dir: Path
    final_params: Params
    records: list[RoundRecord]
    resumed_from: int
    rejections: dict[str, int]
    stopped: str | None = None  # why the run ended before config.rounds (a privacy budget), if it did


def run_server(
    config: ServerConfig, *, hooks: Sequence[RoundHook] = (), on_ready: Callable[[int], None] | None = None
) -> ServerResult:
    """Serve the run until every round is committed; ``on_ready(port)`` once listening."""
    task = resolve_task(config.task, options=config.fit)
    data = task.load_data(Path(config.data_path) if config.data_path else None)
    info = DataInfo.from_dataset(data)
    if config.data_path is None:  # a bundled data set: evaluate on the same held-out split as simulate
        _, held = stratified_split(data.y, config.test_fraction, derive_seed(config.seed, "holdout"))
        data = data.subset(held, source=f"{data.source} (held out)")
    initial = task.build(info, derive_seed(config.seed, "init"))
    strategy = protect_strategy(config, make_strategy(config.strategy, config.strategy_options))
    check = getattr(task, "check_fit_config", None)
    if check is not None:
        check(config.fit)

    run_dir = RunDirectory(Path(config.run_dir))
    resume = bool(run_dir.committed_rounds())
    if resume:
        _check_same_run(run_dir, config)
    ledger = attach_server_ledger(run_dir, server_key_path(config.tls_dir, config.run_dir, config.insecure), run_start(
        task=config.task, initial=initial, strategy=config.strategy, strategy_options=config.strategy_options,
        updates=update_pipeline(config), config_toml=config.to_toml(), simulation=False))
    params, first_round = open_run(run_dir, config.to_toml(), initial, strategy, resume=resume)
    run_id = ledger.run_id  # a resumed run's, from its ledger

    updates = update_pipeline(config)
    pool = FleetPool(
        run_id=run_id, model_id=task.name, schema=initial.schema, update_schema=updates.wire_schema(initial.schema),
        data_info_json=json.dumps(info.to_dict()).encode(), allow=set(config.allow) if config.allow else None,
        heartbeat_seconds=config.heartbeat_seconds, max_payload_bytes=int(config.max_payload_mb * MB),
        keys=NodeKeys(run_dir.path / REGISTRY_NAME),
    )
    pool.ledger = ledger  # nodes are shown its head and may check it
    pool.current_round = first_round - 1
    set_process_log_fields(run_id=run_id, round=lambda: pool.current_round)  # gRPC threads: the round under way
    monitor = _monitor(config, run_id, first_round, pool)
    tls = None if config.insecure else load_pem_bundle(Path(config.tls_dir), "server")
    options = ServerOptions(chunk_bytes=int(config.chunk_mb * MB), max_message_bytes=int(config.max_message_mb * MB))
    server, port = start_server(monitor.handler if monitor else pool, config.bind, tls, options, ledger=pool,
                                bulk=config.bulk)
    completed = False
    watch = [monitor.run] if monitor else []
    try:
        if monitor is not None:
            log.info("metrics at %s", monitor.serve())
        if on_ready is not None:
            on_ready(port)
        if first_round <= config.rounds and not pool.wait_for_nodes(config.min_nodes, config.wait_for_nodes):
            raise RoundFailed(f"only {len(pool.node_ids())} of min_nodes={config.min_nodes} nodes joined "
                              f"within {config.wait_for_nodes:g} s")
        if first_round > config.rounds:  # stopped after its last commit: its nodes are still waiting to hear that
            wait = min(config.wait_for_nodes, FINISHED_RUN_WAIT)
            log.info("every round was committed before this start; waiting up to %g s for nodes to rejoin and "
                     "hear the run is over", wait)
            pool.wait_for_nodes(config.min_nodes, wait)
        policy = RoundPolicy(
            rounds=config.rounds, fraction=config.fraction, min_nodes=config.min_nodes, quorum=config.quorum,
            round_timeout=config.round_timeout, max_retries=config.max_retries,
            federated_eval_every=config.federated_eval_every, seed=config.seed,
        )
        evaluator = (lambda p: task.evaluate(p, data)) if len(data) else None
        coordinator = Coordinator(pool, strategy, policy, fit_config=config.fit, evaluator=evaluator,
                                  hooks=[run_dir, *hooks, *watch], updates=updates, guards=round_guards(config),
                                  secure=secure_aggregation(config))
        final = coordinator.run(params, first_round)
        run_dir.write_final(final)
        completed = True
    finally:
        if completed:  # only then: an interrupted server's nodes must wait for it to return
            pool.close(linger=2 * config.heartbeat_seconds)
        server.stop(grace=2.0).wait(5.0)
        if monitor is not None:  # last, and once the final round was scraped
            monitor.close(wait_for_final_scrape=completed)
        set_process_log_fields(round=None)  # the run id stays: later lines are still about this run
    records = run_dir.records()
    write_report(records, run_dir.path / "report.png", title=f"potluck server: {task.name}, {config.strategy}")
    return ServerResult(run_dir.path, final, records, first_round - 1, dict(pool.rejections), coordinator.stopped)


def _monitor(config: ServerConfig, run_id: str, first_round: int, pool: FleetPool) -> Any:
    """Metrics served at ``metrics_host:metrics_port``, or None when that is off (the default)."""
    if config.metrics_port is None:
        return None
    from potluck.observability.metrics import RunMonitor  # prometheus_client only when asked for

    return RunMonitor(run_id, rounds=config.rounds, first_round=first_round, pool=pool,
                      host=config.metrics_host, port=config.metrics_port)


def _check_same_run(run_dir: RunDirectory, config: ServerConfig) -> None:
    stored = ServerConfig.load(run_dir.config_file)
    keep = ("task", "strategy", "strategy_options", "seed", "fit", "dp", "dp_noise_multiplier", "dp_clip",
            "dp_adaptive_clip", "dp_target_quantile", "dp_nodes")
    differ = [k for k in keep if getattr(stored, k) != getattr(config, k)]
    if differ:
        raise RunDirError(f"{run_dir.path} holds a run with other settings ({', '.join(differ)}); "
                          "use the same settings to resume it, or another --run-dir")
