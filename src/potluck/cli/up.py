"""``potluck up``: a one-command local deployment (server + N nodes over mutual TLS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.cli.simulate import ProgressDisplay, summary
from potluck.core.config import SimulationConfig

HELP = """Deploy on this machine: a fresh CA, one server and N node processes over mutual TLS.

The same task, partition and strategy options as `potluck simulate`; each node gets its own data file and certificate. Progress and the run directory are the same as simulate's; every process is stopped at the end or on Ctrl-C.

Example:

  potluck up --nodes 3 --rounds 20
"""


def up(
    nodes: int = typer.Option(3, help="Node processes to start."),
    task: str = typer.Option("digits", help="Built-in task or module:attribute."),
    data_path: Optional[Path] = typer.Option(None, help="Data to split over the nodes (default: the task's bundled data)."),
    rounds: int = typer.Option(30, help="Rounds to run."),
    strategy: str = typer.Option("fedavg", help="Aggregation strategy."),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", metavar="KEY=VALUE", help="A strategy option (repeatable)."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="A local training setting (repeatable)."),
    partition: str = typer.Option("dirichlet", help="iid, dirichlet, shards or natural."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration."),
    seed: int = typer.Option(0, help="Seed (same meaning as in simulate)."),
    round_timeout: float = typer.Option(120.0, help="Round deadline, seconds."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written.  [default: runs/<time>-up]"),
) -> None:
    with failures_as_exit_codes(lambda line: typer.echo(line, err=True)):
        values: dict[str, Any] = {
            "nodes": nodes, "task": task, "data_path": str(data_path) if data_path else None, "rounds": rounds,
            "strategy": strategy, "partition": partition, "alpha": alpha, "seed": seed, "round_timeout": round_timeout,
            "run_dir": str(run_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-up"),
            "strategy_options": parse_assignments(strategy_option, "--strategy-option"),
            "fit": parse_assignments(fit, "--fit"),
        }
        cfg = SimulationConfig.from_mapping({k: v for k, v in values.items() if v is not None}, source="options")
        from potluck.apps.up import run_up
        from potluck.core.params import Params

        started = time.perf_counter()
        display = ProgressDisplay(cfg.rounds, 1)
        with display.progress:
            result = run_up(cfg, on_record=lambda r: display.on_commit(r, None, None))  # type: ignore[arg-type]
        final = Params.decode((result.run_dir / "model.safetensors").read_bytes())
        summary(result.records, final, result.run_dir, time.perf_counter() - started, 0,
                title=f"potluck up: {len(result.node_ids)} nodes over mutual TLS")
