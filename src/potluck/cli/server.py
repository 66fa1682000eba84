"""``potluck server``: serve one federated run to nodes over gRPC with mutual TLS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.cli.signals import on_sigterm
from potluck.core.config import ServerConfig

HELP = """Serve one federated run: nodes dial in over gRPC with mutual TLS.

Make TLS material first (`potluck certs init`, `issue server --host ...`, `issue node ID`). Started again with the same --run-dir, the server resumes after the last committed round and nodes rejoin by themselves. Every option can be set in a TOML file (--config).

Example:

  potluck server --bind 0.0.0.0:7450 --tls-dir tls --rounds 50 --min-nodes 3 --allow site-a --allow site-b
"""


def server(
    bind: Optional[str] = typer.Option(None, help="host:port to listen on.  [default: 127.0.0.1:7450]"),
    tls_dir: Optional[Path] = typer.Option(None, help="Folder made by `potluck certs`.  [default: tls]"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext, no client certificates. Only for tests on one machine."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written; reused to resume.  [default: runs/server]"),
    task: Optional[str] = typer.Option(None, help="The model to train: a built-in task or module:attribute.  [default: digits]"),
    data_path: Optional[Path] = typer.Option(None, help="Held-out data to evaluate on (and learn the input shape from)."),
    rounds: Optional[int] = typer.Option(None, help="Rounds to run.  [default: 30]"),
    fraction: Optional[float] = typer.Option(None, help="Fraction of live nodes sampled per round.  [default: 1.0]"),
    min_nodes: Optional[int] = typer.Option(None, help="Nodes needed to start a round.  [default: 2]"),
    quorum: Optional[float] = typer.Option(None, help="Fraction of sampled nodes whose results commit a round.  [default: 0.5]"),
    round_timeout: Optional[float] = typer.Option(None, help="Round deadline, seconds.  [default: 120]"),
    max_retries: Optional[int] = typer.Option(None, help="Retries of a round that missed its quorum.  [default: 2]"),
    strategy: Optional[str] = typer.Option(None, help="fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad.  [default: fedavg]"),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", metavar="KEY=VALUE", help="A strategy option (repeatable)."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="Local training setting sent to nodes (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Seed for initialisation and sampling.  [default: 0]"),
    allow: Optional[list[str]] = typer.Option(None, "--allow", metavar="NODE_ID", help="Only these node ids may join (repeatable)."),
    port_file: Optional[Path] = typer.Option(None, help="Write the bound port here once listening (for --bind HOST:0)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with any of these settings (flags win)."),
) -> None:
    def err(line: str) -> None:
        typer.echo(line, err=True)

    with failures_as_exit_codes(err):
        flags: dict[str, Any] = {
            "bind": bind, "tls_dir": str(tls_dir) if tls_dir else None, "run_dir": str(run_dir) if run_dir else None,
            "task": task, "data_path": str(data_path) if data_path else None, "rounds": rounds, "fraction": fraction,
            "min_nodes": min_nodes, "quorum": quorum, "round_timeout": round_timeout, "max_retries": max_retries,
            "strategy": strategy, "seed": seed, "allow": allow or None, "insecure": insecure or None,
        }
        overrides = {k: v for k, v in flags.items() if v is not None}
        if strategy_option:
            overrides["strategy_options"] = parse_assignments(strategy_option, "--strategy-option")
        if fit:
            overrides["fit"] = parse_assignments(fit, "--fit")
        cfg = ServerConfig.load(config, overrides) if config else ServerConfig.from_mapping(overrides, source="options")
        if cfg.insecure:
            err("potluck: WARNING: --insecure: updates travel in plaintext and any client can join")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from potluck.apps.server import run_server

        def ready(port: int) -> None:
            err(f"potluck server: listening on {cfg.bind.rsplit(':', 1)[0]}:{port}, run directory {cfg.run_dir}")
            if port_file:
                port_file.write_text(f"{port}\n")

        on_sigterm()
        try:
            result = run_server(cfg, on_ready=ready)
        except KeyboardInterrupt:
            err(f"potluck server: stopped; start again with --run-dir {cfg.run_dir} to resume")
            raise typer.Exit(0) from None
        last = result.records[-1] if result.records else None
        if last:
            typer.echo(f"potluck server: {last.round} rounds committed, accuracy {last.accuracy:.4f}, "
                       f"model {result.final_params.digest}")
