"""``potluck up``: a one-command local deployment (server + N nodes over mutual TLS)."""

from __future__ import annotations

import time
from dataclasses import fields

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.options import Given, settings_command
from potluck.cli.output import CommandOutput, metrics_url
from potluck.cli.simulate import ProgressDisplay, summary
from potluck.core.config import SimulationConfig
from potluck.observability.logs import RoundLog

HELP = """Deploy on this machine: a fresh CA, one server and N node processes over mutual TLS.

The same task, partition and strategy options as `potluck simulate`; each node gets its own data file and certificate. Progress and the run directory are the same as simulate's; every process is stopped at the end or on Ctrl-C.

Example:

  potluck up --nodes 3 --rounds 20
"""


# What up passes on to its server and nodes: simulate's settings but those of virtual
# nodes only (in-process workers, simulated attacks and dropouts); min_nodes is --nodes.
UP_SETTINGS = frozenset(f.name for f in fields(SimulationConfig)) - {
    "workers", "backend", "ray_address", "node_cpus", "node_gpus", "attack", "attack_fraction", "secagg_dropout", "secagg_dropout_at", "val_fraction", "min_nodes"}
UP_NODES = 3  # node processes by default: each is a whole Python process


def _up(given: Given[SimulationConfig]) -> None:
    out = CommandOutput("potluck.cli.up")
    with failures_as_exit_codes(out.error):
        cfg = given.settings()
        from potluck.apps.simulate import new_run_dir
        from potluck.apps.up import run_up

        cfg = cfg.replace(run_dir=cfg.run_dir or str(new_run_dir("up")))
        from potluck.core.params import Params

        started = time.perf_counter()
        if cfg.log_format == "json":
            out.configure("json")
        if cfg.metrics_port:
            out.info(f"potluck up: metrics at {metrics_url(cfg.metrics_host, cfg.metrics_port)} (server) "
                     f"and on ports {cfg.metrics_port + 1}–{cfg.metrics_port + cfg.nodes} (nodes)")
        if out.json:  # no progress bar: a log line per round
            rounds = RoundLog()
            result = run_up(cfg, on_record=lambda r: rounds.on_commit(r, None, None))
        else:
            display = ProgressDisplay(cfg.rounds, 1)
            with display.progress:
                result = run_up(cfg, on_record=lambda r: display.on_commit(r, None, None))  # type: ignore[arg-type]
        final = Params.decode((result.run_dir / "model.safetensors").read_bytes())
        summary(result.records, final, result.run_dir, time.perf_counter() - started, 0,
                title=f"potluck up: {len(result.node_ids)} nodes over mutual TLS", stopped=result.stopped)


up = settings_command(SimulationConfig, _up, only=UP_SETTINGS, defaults={"nodes": UP_NODES})
