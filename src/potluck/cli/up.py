"""``potluck up``: a one-command local deployment (server + N nodes over mutual TLS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.cli.output import CommandOutput, metrics_url
from potluck.cli.simulate import ProgressDisplay, summary
from potluck.core.config import SimulationConfig
from potluck.observability.logs import RoundLog

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
    compression: str = typer.Option("none", help="How nodes compress their updates: none, quantize, topk or topk+quantize."),
    compression_bits: int = typer.Option(8, help="Bits per value, 1–8, for quantize and topk+quantize."),
    compression_ratio: float = typer.Option(0.01, help="Fraction of entries topk sends, in (0, 1]."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written.  [default: runs/<time>-up]"),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus metrics: the server on PORT, node i on PORT+1+i.  [default: off]"),
    metrics_host: str = typer.Option("127.0.0.1", help="Address the metrics endpoints listen on."),
    log_format: str = typer.Option("text", help="text, or json: the processes' logs (and this command's) as JSON lines."),
    dp: str = typer.Option("none", help="Differential privacy (docs/privacy.md): none, central, local or distributed."),
    dp_noise_multiplier: float = typer.Option(1.0, help="σ: Gaussian noise std is σ·C on a round's sum."),
    dp_clip: float = typer.Option(1.0, help="C: the L2 norm each update is clipped to."),
    dp_adaptive_clip: bool = typer.Option(False, "--dp-adaptive-clip", help="Central DP: adapt C toward --dp-target-quantile of the norms."),
    dp_target_quantile: float = typer.Option(0.5, help="Quantile of update norms adaptive clipping aims for."),
    dp_delta: float = typer.Option(1e-5, help="δ at which ε is reported; below 1 / nodes."),
    dp_epsilon_budget: float = typer.Option(0.0, help="Stop before the round that would take ε above this (0: none)."),
    secagg: bool = typer.Option(False, "--secagg", help="Secure aggregation: the server learns only the sum of the nodes' updates."),
    secagg_clip: float = typer.Option(1.0, help="c: each update value is clipped to [−c, c] before masking."),
    secagg_bits: int = typer.Option(16, help="b: bits per value; nodes · (2^b − 1) < 2^32."),
) -> None:
    out = CommandOutput("potluck.cli.up")
    with failures_as_exit_codes(out.error):
        values: dict[str, Any] = {
            "nodes": nodes, "task": task, "data_path": str(data_path) if data_path else None, "rounds": rounds,
            "strategy": strategy, "partition": partition, "alpha": alpha, "seed": seed, "round_timeout": round_timeout,
            "run_dir": str(run_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-up"),
            "strategy_options": parse_assignments(strategy_option, "--strategy-option"),
            "fit": parse_assignments(fit, "--fit"),
            "compression": compression, "compression_bits": compression_bits, "compression_ratio": compression_ratio,
            "metrics_port": metrics_port, "metrics_host": metrics_host, "log_format": log_format,
            "dp": dp, "dp_noise_multiplier": dp_noise_multiplier, "dp_clip": dp_clip, "dp_adaptive_clip": dp_adaptive_clip,
            "dp_target_quantile": dp_target_quantile, "dp_delta": dp_delta, "dp_epsilon_budget": dp_epsilon_budget,
            **({"secagg": True, "secagg_clip": secagg_clip, "secagg_bits": secagg_bits} if secagg else {}),
        }
        cfg = SimulationConfig.from_mapping({k: v for k, v in values.items() if v is not None}, source="options")
        from potluck.apps.up import run_up
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
