"""``potluck server``: serve one federated run to nodes over gRPC with mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.cli.output import CommandOutput
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
    compression: Optional[str] = typer.Option(None, help="How nodes compress their updates (sent to them each round): none, quantize, topk or topk+quantize.  [default: none]"),
    compression_bits: Optional[int] = typer.Option(None, help="Bits per value, 1–8, for quantize and topk+quantize.  [default: 8]"),
    compression_ratio: Optional[float] = typer.Option(None, help="Fraction of entries topk sends, in (0, 1].  [default: 0.01]"),
    port_file: Optional[Path] = typer.Option(None, help="Write the bound port here once listening (for --bind HOST:0)."),
    bulk: Optional[str] = typer.Option(None, help="Where the bulk lane for model payloads listens (mutual TLS, beside gRPC; nodes that cannot reach it use gRPC): auto (the gRPC port + 1), off, or HOST:PORT.  [default: auto]"),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics at http://HOST:PORT/metrics.  [default: off]"),
    metrics_host: Optional[str] = typer.Option(None, help="Address the metrics endpoint listens on.  [default: 127.0.0.1]"),
    log_format: Optional[str] = typer.Option(None, help="text, or json: one JSON object per line.  [default: text]"),
    dp: Optional[str] = typer.Option(None, help="Differential privacy (docs/privacy.md): none, central, local or distributed.  [default: none]"),
    dp_noise_multiplier: Optional[float] = typer.Option(None, help="σ: Gaussian noise std is σ·C on a round's sum.  [default: 1.0]"),
    dp_clip: Optional[float] = typer.Option(None, help="C: the L2 norm each update is clipped to.  [default: 1.0]"),
    dp_adaptive_clip: bool = typer.Option(False, "--dp-adaptive-clip", help="Central DP: move C toward --dp-target-quantile of the update norms."),
    dp_target_quantile: Optional[float] = typer.Option(None, help="Quantile of update norms adaptive clipping aims for.  [default: 0.5]"),
    dp_delta: Optional[float] = typer.Option(None, help="δ at which ε is reported; below 1 / nodes.  [default: 1e-5]"),
    dp_epsilon_budget: Optional[float] = typer.Option(None, help="Stop before the round that would take ε above this (0: none).  [default: 0]"),
    dp_nodes: Optional[int] = typer.Option(None, help="Nodes in the federation, for DP accounting (sampling rate) and the fixed denominator.  [default: --min-nodes]"),
    secagg: bool = typer.Option(False, "--secagg", help="Secure aggregation (docs/secure-aggregation.md): nodes mask their clipped, quantised updates so the server learns only their sum."),
    secagg_neighbours: Optional[int] = typer.Option(None, help="k: neighbours each node masks and shares with; even (0: 2·⌈log2 n⌉).  [default: 0]"),
    secagg_threshold: Optional[int] = typer.Option(None, help="t: neighbours' shares needed to unmask a node, above k/2 (0: ⌊k/2⌋ + 1).  [default: 0]"),
    secagg_clip: Optional[float] = typer.Option(None, help="c: each update value is clipped to [−c, c].  [default: 1.0]"),
    secagg_bits: Optional[int] = typer.Option(None, help="b: bits per value; nodes per round · (2^b − 1) < 2^32.  [default: 16]"),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with any of these settings (flags win)."),
) -> None:
    out = CommandOutput("potluck.cli.server")
    with failures_as_exit_codes(out.error):
        flags: dict[str, Any] = {
            "bind": bind, "bulk": bulk, "tls_dir": str(tls_dir) if tls_dir else None, "run_dir": str(run_dir) if run_dir else None,
            "task": task, "data_path": str(data_path) if data_path else None, "rounds": rounds, "fraction": fraction,
            "min_nodes": min_nodes, "quorum": quorum, "round_timeout": round_timeout, "max_retries": max_retries,
            "strategy": strategy, "seed": seed, "allow": allow or None, "insecure": insecure or None,
            "compression": compression, "compression_bits": compression_bits, "compression_ratio": compression_ratio,
            "metrics_port": metrics_port, "metrics_host": metrics_host, "log_format": log_format,
            "dp": dp, "dp_noise_multiplier": dp_noise_multiplier, "dp_clip": dp_clip,
            "dp_adaptive_clip": dp_adaptive_clip or None, "dp_target_quantile": dp_target_quantile,
            "dp_delta": dp_delta, "dp_epsilon_budget": dp_epsilon_budget, "dp_nodes": dp_nodes,
            "secagg": secagg or None, "secagg_neighbours": secagg_neighbours, "secagg_threshold": secagg_threshold,
            "secagg_clip": secagg_clip, "secagg_bits": secagg_bits,
        }
        overrides = {k: v for k, v in flags.items() if v is not None}
        if strategy_option:
            overrides["strategy_options"] = parse_assignments(strategy_option, "--strategy-option")
        if fit:
            overrides["fit"] = parse_assignments(fit, "--fit")
        cfg = ServerConfig.load(config, overrides) if config else ServerConfig.from_mapping(overrides, source="options")
        out.configure(cfg.log_format)
        if cfg.insecure:
            out.warning("potluck: WARNING: --insecure: updates travel in plaintext and any client can join")
        from potluck.apps.server import run_server

        def ready(port: int) -> None:
            out.info(f"potluck server: listening on {cfg.bind.rsplit(':', 1)[0]}:{port}, run directory {cfg.run_dir}")
            if port_file:
                port_file.write_text(f"{port}\n")

        on_sigterm()
        try:
            result = run_server(cfg, on_ready=ready)
        except KeyboardInterrupt:
            out.info(f"potluck server: stopped; start again with --run-dir {cfg.run_dir} to resume")
            raise typer.Exit(0) from None
        last = result.records[-1] if result.records else None
        if last:
            eps = f", ε {last.extras['epsilon']:.3f}" if "epsilon" in last.extras else ""
            out.result(f"potluck server: {last.round} rounds committed, accuracy {last.accuracy:.4f}{eps}, "
                       f"model {result.final_params.digest}")
        if result.stopped:
            out.result(f"potluck server: stopped after round {last.round if last else 0}: {result.stopped}")
