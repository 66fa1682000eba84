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
from potluck.cli.output import CommandOutput, metrics_url
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

  potluck simulate --nodes 40 --fraction 0.5 --dp central --dp-noise-multiplier 0.7 --dp-epsilon-budget 8

  potluck simulate --run-dir runs/a --resume
"""

_console = Console(stderr=True)


class ProgressDisplay:
    """A live bar with the current round, accuracy, loss and privacy spent (a RoundHook)."""

    def __init__(self, rounds: int, first_round: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
            TextColumn("accuracy {task.fields[acc]}  loss {task.fields[loss]}{task.fields[eps]}"), TimeElapsedColumn(),
            console=_console, transient=False,
        )
        self.bar = self.progress.add_task("rounds", total=rounds, completed=first_round - 1, acc="-", loss="-",
                                          eps="")

    def on_commit(self, record: RoundRecord, params: Params, strategy: Any) -> None:
        eps = f"  ε {record.extras['epsilon']:.2f}" if "epsilon" in record.extras else ""
        self.progress.update(self.bar, completed=record.round, acc=f"{record.accuracy:.4f}", loss=f"{record.loss:.4f}",
                             eps=eps)


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
    strategy: Optional[str] = typer.Option(None, help="fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, or robust to attacks: median, trimmed-mean (trim=β), krum (byzantine=f), multi-krum (byzantine=f, select=m), norm-bound (max_norm=C).  [default: fedavg]"),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", metavar="KEY=VALUE", help="A strategy option, e.g. server_lr=0.01 or mu=0.1 (repeatable)."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="A local training setting: lr, epochs, batch_size, optimizer, momentum, weight_decay (repeatable)."),
    partition: Optional[str] = typer.Option(None, help="How data is split over nodes: iid, dirichlet, shards, natural.  [default: dirichlet]"),
    alpha: Optional[float] = typer.Option(None, help="Dirichlet concentration; smaller is more non-IID.  [default: 0.5]"),
    seed: Optional[int] = typer.Option(None, help="Seed for splitting, sampling, initialisation and shuffling.  [default: 0]"),
    workers: Optional[int] = typer.Option(None, help="1: all nodes in this process; N > 1: N worker processes; 0: one per core.  [default: 1]"),
    federated_eval_every: Optional[int] = typer.Option(None, help="Evaluate on the nodes' validation splits every k rounds (0: last round only).  [default: 0]"),
    attack: Optional[str] = typer.Option(None, help="Simulated Byzantine nodes: none, sign-flip (send −Δ), scale (send 100·Δ) or random (Gaussian noise of Δ's norm).  [default: none]"),
    attack_fraction: Optional[float] = typer.Option(None, help="Fraction of nodes that attack, chosen from --seed.  [default: 0]"),
    compression: Optional[str] = typer.Option(None, help="Compress nodes' updates: none, quantize (--compression-bits per value), topk (send the --compression-ratio largest entries, keep the rest for later) or topk+quantize.  [default: none]"),
    compression_bits: Optional[int] = typer.Option(None, help="Bits per value, 1–8, for quantize and topk+quantize.  [default: 8]"),
    compression_ratio: Optional[float] = typer.Option(None, help="Fraction of entries topk sends, in (0, 1].  [default: 0.01]"),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics at http://HOST:PORT/metrics during the run.  [default: off]"),
    metrics_host: Optional[str] = typer.Option(None, help="Address the metrics endpoint listens on.  [default: 127.0.0.1]"),
    log_format: Optional[str] = typer.Option(None, help="text (a progress bar), or json: one JSON log line per event instead.  [default: text]"),
    dp: Optional[str] = typer.Option(None, help="Differential privacy (docs/privacy.md): none; central (the server clips, sums and adds noise); local (each node clips and adds σ·C noise); distributed (each node adds σ·C/√n, the sum carries σ·C).  [default: none]"),
    dp_noise_multiplier: Optional[float] = typer.Option(None, help="σ: Gaussian noise std is σ·C on a round's sum.  [default: 1.0]"),
    dp_clip: Optional[float] = typer.Option(None, help="C: the L2 norm each update is clipped to (the initial C when adaptive).  [default: 1.0]"),
    dp_adaptive_clip: bool = typer.Option(False, "--dp-adaptive-clip", help="Central DP: move C toward --dp-target-quantile of the update norms each round."),
    dp_target_quantile: Optional[float] = typer.Option(None, help="Quantile of update norms adaptive clipping aims for.  [default: 0.5]"),
    dp_delta: Optional[float] = typer.Option(None, help="δ at which ε is reported; below 1 / nodes.  [default: 1e-5]"),
    dp_epsilon_budget: Optional[float] = typer.Option(None, help="Stop before the round that would take ε above this (0: no budget).  [default: 0]"),
    secagg: bool = typer.Option(False, "--secagg", help="Secure aggregation (docs/secure-aggregation.md): nodes mask their clipped, quantised updates so the server learns only their sum."),
    secagg_neighbours: Optional[int] = typer.Option(None, help="k: neighbours each node masks and shares with; even (0: 2·⌈log2 n⌉).  [default: 0]"),
    secagg_threshold: Optional[int] = typer.Option(None, help="t: neighbours' shares needed to unmask a node, above k/2 (0: ⌊k/2⌋ + 1).  [default: 0]"),
    secagg_clip: Optional[float] = typer.Option(None, help="c: each update value is clipped to [−c, c].  [default: 1.0]"),
    secagg_bits: Optional[int] = typer.Option(None, help="b: bits per value; nodes per round · (2^b − 1) < 2^32.  [default: 16]"),
    secagg_dropout: Optional[float] = typer.Option(None, help="Simulation: fraction of each round's nodes that drop out of secure aggregation.  [default: 0]"),
    secagg_dropout_at: Optional[str] = typer.Option(None, help="When they drop: masked-input (before sending it) or unmask (after).  [default: unmask]"),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written.  [default: runs/<time>-<task>]"),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with any of these settings (flags win)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last committed round."),
) -> None:
    out = CommandOutput("potluck.cli.simulate")
    with failures_as_exit_codes(out.error):
        flags = {
            "task": task, "data_path": str(data_path) if data_path else None, "nodes": nodes,
            "label_column": label_column, "group_column": group_column, "rounds": rounds,
            "fraction": fraction, "min_nodes": min_nodes, "quorum": quorum, "round_timeout": round_timeout,
            "strategy": strategy, "partition": partition, "alpha": alpha, "seed": seed, "workers": workers,
            "federated_eval_every": federated_eval_every, "run_dir": str(run_dir) if run_dir else None,
            "attack": attack, "attack_fraction": attack_fraction,
            "compression": compression, "compression_bits": compression_bits, "compression_ratio": compression_ratio,
            "metrics_port": metrics_port, "metrics_host": metrics_host, "log_format": log_format,
            "dp": dp, "dp_noise_multiplier": dp_noise_multiplier, "dp_clip": dp_clip,
            "dp_adaptive_clip": dp_adaptive_clip or None, "dp_target_quantile": dp_target_quantile,
            "dp_delta": dp_delta, "dp_epsilon_budget": dp_epsilon_budget,
            "secagg": secagg or None, "secagg_neighbours": secagg_neighbours, "secagg_threshold": secagg_threshold,
            "secagg_clip": secagg_clip, "secagg_bits": secagg_bits,
            "secagg_dropout": secagg_dropout, "secagg_dropout_at": secagg_dropout_at,
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
        _run(cfg, resume, out)


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
            result = run_simulation(cfg, resume=resume, hooks=[display])
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
    table.add_row("accuracy (held-out)", f"{last.accuracy:.4f}  (best {max(r.accuracy for r in records):.4f})")
    table.add_row("loss (held-out)", f"{last.loss:.4f}")
    if last.federated_accuracy == last.federated_accuracy:  # not NaN
        table.add_row("accuracy (nodes' validation)", f"{last.federated_accuracy:.4f}")
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
    if stopped:
        out.print(f"stopped after round {last.round}: {stopped}")


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
