"""``server``: one federated run served to real nodes over gRPC (mutual TLS by default).

The same coordinator and strategy as ``simulate``; the pool is a :class:`FleetPool`.
Started again with the same run directory, the server resumes after its last committed
round, and nodes rejoin by themselves.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.apps.provenance import REGISTRY_NAME, attach_server_ledger, server_key_path
from potluck.apps.run import AssembledRun, assemble_run
from potluck.backends.fleet import FleetPool
from potluck.core.config import SERVER_RUN_DIR, ServerConfig
from potluck.core.errors import ConfigError, RoundFailed
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.core.seeds import derive_seed
from potluck.ledger.signing import NodeKeys
from potluck.runtime.coordinator import RoundHook
from potluck.runtime.federation import stratified_split
from potluck.runtime.logcontext import set_process_log_fields
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.base import Strategy
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo, Task, metric_of
from potluck.transport.addresses import bare_host, split_address
from potluck.transport.certs import load_pem_bundle
from potluck.transport.revocation import reload_on_sighup
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
    """Serve the run until every round is committed; ``on_ready(port)`` once listening.

    Started again with the same run directory (default ``runs/server``), the server
    resumes after the last committed round."""
    config = config.replace(run_dir=config.run_dir or SERVER_RUN_DIR)
    check_can_serve(config)
    # Before anything is written: a start that fails for want of TLS files leaves no run behind.
    tls = None if config.insecure else load_pem_bundle(Path(config.tls_dir), "server")
    with _private_files():
        return _run(config, hooks, on_ready, tls)


def check_can_serve(config: ServerConfig) -> None:
    """ConfigError for settings this server cannot meet, before it builds anything: more
    ``min_nodes`` than its allow-list names, or plaintext on an address other machines
    can reach without ``insecure_remote``."""
    if config.allow and config.min_nodes > len(set(config.allow)):
        raise ConfigError(f"min_nodes={config.min_nodes} can never be met: the allow-list names only "
                          f"{len(set(config.allow))} nodes ({', '.join(sorted(set(config.allow)))})")
    if config.insecure and not config.insecure_remote and not _loopback(config.bind):
        raise ConfigError(f"--insecure serves plaintext, and any client may claim any node id: it binds only a "
                          f"loopback address, not {config.bind} (add --insecure-remote to mean it)")


def _loopback(bind: str) -> bool:
    host = bare_host(split_address(bind, "bind address")[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """What the server writes while it runs (run directory, checkpoints, ledger, keys)
    is readable by its owner only: directories 0700, files 0600."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


class _RoundLine:
    """One log line per committed round."""

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> None:
        log.info("round %d committed: %d of %d nodes, %d examples, %s %.4f, loss %.4f, %.1f s",
                 record.round, record.num_nodes, record.sampled, record.num_examples, record.metric,
                 record.primary, record.loss, record.seconds)


def _run(config: ServerConfig, hooks: Sequence[RoundHook], on_ready: Callable[[int], None] | None,
         tls: Any) -> ServerResult:
    task, data, info = _evaluation_data(config)
    initial = task.build(info, derive_seed(config.seed, "init"))
    check = getattr(task, "check_fit_config", None)
    if check is not None:
        check(config.fit)
    key = server_key_path(config.tls_dir, str(config.run_dir), config.insecure)
    run = assemble_run(config, initial, lambda run_dir, start: attach_server_ledger(run_dir, key, start),
                       resume=bool(RunDirectory(Path(str(config.run_dir))).committed_rounds()), simulation=False)
    pool = _fleet_pool(config, run, task.name, info)
    set_process_log_fields(run_id=pool.run_id, round=lambda: pool.current_round)  # gRPC threads: the round under way
    monitor = run.monitor(pool.run_id, pool)
    server, port = _serve(config, monitor.handler if monitor else pool, pool, tls)
    restore_sighup = reload_on_sighup(server.revocations)  # SIGHUP: re-read tls/crl.pem
    completed = False
    try:
        if monitor is not None:
            log.info("metrics at %s", monitor.serve())
        if on_ready is not None:
            on_ready(port)
        _wait_for_nodes(config, pool, run.first_round)
        evaluator = (lambda p: task.evaluate(p, data)) if len(data) else None
        coordinator = run.coordinator(pool, evaluator, [_RoundLine(), *hooks, *([monitor.run] if monitor else [])],
                                      metric_of(task))
        final = coordinator.run(run.params, run.first_round)
        records = run.finish(final, f"potluck server: {task.name}, {config.strategy}")
        completed = True
    finally:
        if completed:  # only then: an interrupted server's nodes must wait for it to return
            pool.close(linger=2 * config.heartbeat_seconds)
        server.stop(grace=2.0).wait(5.0)
        restore_sighup()
        if monitor is not None:  # last, and once the final round was scraped
            monitor.close(wait_for_final_scrape=completed)
        set_process_log_fields(round=None)  # the run id stays: later lines are still about this run
    return ServerResult(run.run_dir.path, final, records, run.first_round - 1, dict(pool.rejections),
                        coordinator.stopped)


def _evaluation_data(config: ServerConfig) -> tuple[Task, Dataset, DataInfo]:
    """The task, the data the server evaluates on, and the data's shape (sent to nodes)."""
    task = resolve_task(config.task, options=config.fit)
    data = task.load_data(Path(config.data_path) if config.data_path else None)
    info = DataInfo.from_dataset(data)
    if config.data_path is None:  # a bundled data set: evaluate on the same held-out split as simulate
        _, held = stratified_split(data.y, config.test_fraction, derive_seed(config.seed, "holdout"))
        data = data.subset(held, source=f"{data.source} (held out)")
    return task, data, info


def _fleet_pool(config: ServerConfig, run: AssembledRun, model_id: str, info: DataInfo) -> FleetPool:
    pool = FleetPool(
        run_id=run.ledger.run_id, model_id=model_id, schema=run.params.schema,
        update_schema=run.updates.wire_schema(run.params.schema), data_info_json=json.dumps(info.to_dict()).encode(),
        allow=set(config.allow) if config.allow else None, heartbeat_seconds=config.heartbeat_seconds,
        max_payload_bytes=int(config.max_payload_mb * MB), keys=NodeKeys(run.run_dir.path / REGISTRY_NAME),
        max_examples=config.max_examples,
    )
    pool.ledger = run.ledger  # nodes are shown its head and may check it
    pool.current_round = run.first_round - 1
    return pool


def _serve(config: ServerConfig, handler: Any, pool: FleetPool, tls: Any) -> tuple[Any, int]:
    """The gRPC server (and its bulk lane) for ``handler``, listening; and its port."""
    options = ServerOptions(chunk_bytes=int(config.chunk_mb * MB), max_message_bytes=int(config.max_message_mb * MB),
                            calls_per_node=config.calls_per_node, io_timeout=config.call_timeout)
    return start_server(handler, config.bind, tls, options, ledger=pool, bulk=config.bulk)


def _wait_for_nodes(config: ServerConfig, pool: FleetPool, first_round: int) -> None:
    """Wait for ``min_nodes`` to join (RoundFailed if they don't in ``wait_for_nodes``); after
    the last round, wait briefly so returning nodes hear the run is over."""
    if first_round <= config.rounds and not pool.wait_for_nodes(config.min_nodes, config.wait_for_nodes):
        raise RoundFailed(f"only {len(pool.node_ids())} of min_nodes={config.min_nodes} nodes joined "
                          f"within {config.wait_for_nodes:g} s")
    if first_round > config.rounds:  # stopped after its last commit: its nodes are still waiting to hear that
        wait = min(config.wait_for_nodes, FINISHED_RUN_WAIT)
        log.info("every round was committed before this start; waiting up to %g s for nodes to rejoin and "
                 "hear the run is over", wait)
        pool.wait_for_nodes(config.min_nodes, wait)
