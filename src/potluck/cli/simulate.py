"""``potluck simulate``: parse flags, show progress, print the summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.core.config import SimulationConfig
from potluck.core.params import Params
from potluck.runtime.records import RoundRecord

HELP = """Simulate a federation of virtual nodes on this machine.

With no options: the `digits` task (scikit-learn's 8×8 digits, a PyTorch MLP), 10
nodes with a non-IID Dirichlet(0.5) split, FedAvg, 30 rounds. Every option can also be
set in a TOML file (--config); flags win over the file.

Examples:

  potluck simulate

  potluck simulate --strategy fedadam --strategy-option server_lr=0.01 --partition shards

  potluck simulate --task mlp --data-path ../shared/data/mnist --nodes 20 --workers 0

  potluck simulate --run-dir runs/a --resume
"""

_console = Console(stderr=True)


class ProgressDisplay:
    """A live bar with the current round, accuracy and loss (a RoundHook)."""

    def __init__(self, rounds: int, first_round: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
            TextColumn("accuracy {task.fields[acc]}  loss {task.fields[loss]}"), TimeElapsedColumn(),
            console=_console, transient=False,
        )
        self.bar = self.progress.add_task("rounds", total=rounds, completed=first_round - 1, acc="-", loss="-")

    def on_commit(self, record: RoundRecord, params: Params, strategy: Any) -> None:
        self.progress.update(self.bar, completed=record.round, acc=f"{record.accuracy:.4f}", loss=f"{record.loss:.4f}")


def simulate(
    task: Optional[str] = typer.Option(None, help="Built-in task (digits, digits-sklearn, mlp, cnn) or module:attribute.  [default: digits]"),
    data_path: Optional[Path] = typer.Option(None, help="Data for the task: CSV (label column), NPZ (x, y), IDX (MNIST) or an image folder."),
    label_column: Optional[str] = typer.Option(None, help="CSV column holding the label.  [default: label]"),
    group_column: Optional[str] = typer.Option(None, help="CSV column naming each example's owner, for --partition natural."),
    nodes: Optional[int] = typer.Option(None, help="Number of virtual nodes.  [default: 10]"),
    rounds: Optional[int] = typer.Option(None, help="Rounds to run.  [default: 30]"),
    fraction: Optional[float] = typer.Option(None, help="Fraction of nodes sampled per round.  [default: 1.0]"),
    min_nodes: Optional[int] = typer.Option(None, help="Sample at least this many nodes.  [default: 1]"),
    quorum: Optional[float] = typer.Option(None, help="Fraction of sampled nodes whose results a round needs to commit.  [default: 0.5]"),
    round_timeout: Optional[float] = typer.Option(None, help="Round deadline in seconds.  [default: 600]"),
    strategy: Optional[str] = typer.Option(None, help="fedavg, fedavgm, fedprox, fedadam, fedyogi or fedadagrad.  [default: fedavg]"),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", metavar="KEY=VALUE", help="A strategy option, e.g. server_lr=0.01 or mu=0.1 (repeatable)."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="A local training setting: lr, epochs, batch_size, optimizer, momentum, weight_decay (repeatable)."),
    partition: Optional[str] = typer.Option(None, help="How data is split over nodes: iid, dirichlet, shards, natural.  [default: dirichlet]"),
    alpha: Optional[float] = typer.Option(None, help="Dirichlet concentration; smaller is more non-IID.  [default: 0.5]"),
    seed: Optional[int] = typer.Option(None, help="Seed for splitting, sampling, initialisation and shuffling.  [default: 0]"),
    workers: Optional[int] = typer.Option(None, help="1: all nodes in this process; N > 1: N worker processes; 0: one per core.  [default: 1]"),
    federated_eval_every: Optional[int] = typer.Option(None, help="Evaluate on the nodes' validation splits every k rounds (0: last round only).  [default: 0]"),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written.  [default: runs/<time>-<task>]"),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with any of these settings (flags win)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last committed round."),
) -> None:
    with failures_as_exit_codes(lambda line: typer.echo(line, err=True)):
        flags = {
            "task": task, "data_path": str(data_path) if data_path else None, "nodes": nodes,
            "label_column": label_column, "group_column": group_column, "rounds": rounds,
            "fraction": fraction, "min_nodes": min_nodes, "quorum": quorum, "round_timeout": round_timeout,
            "strategy": strategy, "partition": partition, "alpha": alpha, "seed": seed, "workers": workers,
            "federated_eval_every": federated_eval_every, "run_dir": str(run_dir) if run_dir else None,
        }
        overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
        if strategy_option:
            overrides["strategy_options"] = parse_assignments(strategy_option, "--strategy-option")
        if fit:
            overrides["fit"] = parse_assignments(fit, "--fit")
        cfg = (
            SimulationConfig.load(config, overrides) if config
            else SimulationConfig.from_mapping(overrides, source="options")
        )
        _run(cfg, resume)


def _run(cfg: SimulationConfig, resume: bool) -> None:
    from potluck.apps.simulate import run_simulation  # heavy imports only once flags are valid

    started = time.perf_counter()
    display = ProgressDisplay(cfg.rounds, 1)
    with display.progress:
        result = run_simulation(cfg, resume=resume, hooks=[display])
    summary(result.records, result.final_params, result.run_dir, time.perf_counter() - started, result.resumed_from)


def summary(records: list[RoundRecord], final: Params, run_dir: Path, seconds: float, resumed_from: int,
             title: str = "potluck simulate") -> None:
    out = Console()
    last = records[-1]
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("rounds", f"{last.round}" + (f" (resumed after round {resumed_from})" if resumed_from else ""))
    table.add_row("accuracy (held-out)", f"{last.accuracy:.4f}  (best {max(r.accuracy for r in records):.4f})")
    table.add_row("loss (held-out)", f"{last.loss:.4f}")
    if last.federated_accuracy == last.federated_accuracy:  # not NaN
        table.add_row("accuracy (nodes' validation)", f"{last.federated_accuracy:.4f}")
    failed = sum(sum(r.failures.values()) for r in records)
    table.add_row("results not aggregated", str(failed))
    table.add_row("wall time", f"{seconds:.2f} s")
    table.add_row("model digest", final.digest)
    table.add_row("run directory", str(run_dir))
    out.print(table)
