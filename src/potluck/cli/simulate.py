"""``potluck simulate``: parse flags, show progress, print the summary."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.options import Given, option, settings_command
from potluck.cli.output import CommandOutput, best_text, metrics_url, round_figures
from potluck.core.config import SimulationConfig
from potluck.core.params import Params, ParamsKind
from potluck.core.records import RoundRecord
from potluck.observability.logs import RoundLog

HELP = """Simulate a federation of virtual nodes on this machine.

With no options: the `digits` task (scikit-learn's 8×8 digits, a PyTorch MLP), 10
nodes with a non-IID Dirichlet(0.5) split, FedAvg, 30 rounds. Every option can also be
set in a TOML file (--config); flags win over the file.

Examples:

  potluck simulate

  potluck simulate --strategy fedadam --strategy-option server_lr=0.01 --partition shards

  potluck simulate --nodes 20 --attack scale --attack-fraction 0.2 --strategy multi-krum -S byzantine=4

  potluck simulate --task mlp --data-path ../shared/data/mnist --nodes 20 --workers 0

  potluck simulate --nodes 50 --fraction 0.2 --dp central --dp-noise-multiplier 1.0 --dp-epsilon-budget 8

  potluck simulate --run-dir runs/a --resume
"""

_console = Console(stderr=True)


class ProgressDisplay:
    """A live bar with the current round, the task's primary metric, loss and privacy spent (a RoundHook)."""

    def __init__(self, rounds: int, first_round: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[figures]}{task.fields[eps]}"), TimeElapsedColumn(),
            console=_console, transient=False,
        )
        self.bar = self.progress.add_task("rounds", total=rounds, completed=first_round - 1, figures="", eps="")
        self.committed = False

    def hide_unless_started(self) -> None:
        if not self.committed:  # the bar is erased when it stops
            self.progress.live.transient = True

    def on_commit(self, record: RoundRecord, params: Params, strategy: Any) -> None:
        self.committed = True
        eps = f"  ε {record.extras['epsilon']:.2f}" if "epsilon" in record.extras else ""
        self.progress.update(self.bar, completed=record.round, figures=round_figures(record), eps=eps)


def _simulate(given: Given[SimulationConfig]) -> None:
    out = CommandOutput("potluck.cli.simulate")
    with failures_as_exit_codes(out.error):
        _run(given.settings(), bool(given.extras["resume"]), out)


simulate = settings_command(SimulationConfig, _simulate, [
    option("resume", bool, False, "--resume", help="Continue the run in --run-dir from its last committed round."),
])


def _run(cfg: SimulationConfig, resume: bool, out: CommandOutput) -> None:
    from potluck.apps.simulate import run_simulation  # heavy imports only once flags are valid

    started = time.perf_counter()
    if cfg.log_format == "json":  # no progress bar: a log line per round
        out.configure("json")
        result = run_simulation(cfg, resume=resume, hooks=[RoundLog()])
    else:
        if cfg.metrics_port:
            out.info(f"potluck simulate: metrics at {metrics_url(cfg.metrics_host, cfg.metrics_port)}")
        display = ProgressDisplay(cfg.rounds, 1)
        with display.progress:
            try:
                result = run_simulation(cfg, resume=resume, hooks=[display])
            except BaseException:
                display.hide_unless_started()  # no stale "round 0/30" above the error line
                raise
    summary(result.records, result.final_params, result.run_dir, time.perf_counter() - started, result.resumed_from,
            stopped=result.stopped)


def summary(records: list[RoundRecord], final: Params, run_dir: Path, seconds: float, resumed_from: int,
             title: str = "potluck simulate", stopped: str | None = None) -> None:
    out = Console()
    if not records:  # a privacy budget too small for even one round
        out.print(f"{title}: no round committed" + (f"; {stopped}" if stopped else ""))
        return
    last = records[-1]
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("rounds", f"{last.round}" + (f" (resumed after round {resumed_from})" if resumed_from else ""))
    table.add_row(f"{last.metric} (held-out)", f"{last.primary:.4f}")
    best = best_text(records)
    if best:
        table.add_row(f"best {last.metric}", best)
    if last.metric != "loss":
        table.add_row("loss (held-out)", f"{last.loss:.4f}")
    if not math.isnan(last.federated_primary):
        table.add_row(f"{last.metric} (nodes' validation)", f"{last.federated_primary:.4f}")
    failed = sum(sum(r.failures.values()) for r in records)
    table.add_row("results not aggregated", str(failed))
    sent = bytes_up_row(records, final)
    if sent:
        table.add_row("bytes up per round", sent)
    if "epsilon" in last.extras:
        table.add_row("privacy spent", f"ε = {last.extras['epsilon']:.3f} at δ = {last.extras.get('delta', float('nan')):g}")
    table.add_row("wall time", f"{seconds:.2f} s")
    table.add_row("model digest", final.digest)
    table.add_row("run directory", str(run_dir))
    out.print(table)
    if stopped:  # the reason names the last round: one line, however narrow the terminal
        out.print(stopped, soft_wrap=True, markup=False)


def bytes_up_row(records: list[RoundRecord], final: Params) -> str:
    """Mean bytes nodes sent per round, and how many times fewer than uncompressed
    updates of this model would have been (empty when no round recorded its bytes)."""
    counted = [r for r in records if r.bytes_up > 0]
    if not counted:
        return ""
    sent = sum(r.bytes_up for r in counted)
    plain = final.with_kind(ParamsKind.DELTA).encoded_size * sum(r.num_nodes for r in counted)
    text = f"{sent / len(counted) / 1024:,.1f} KiB"
    return text + (f"  ({plain / sent:.1f}× fewer than uncompressed)" if sent < plain else "")
