"""``potluck server``: serve one federated run to nodes over gRPC with mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.options import Given, option, settings_command
from potluck.cli.output import CommandOutput, round_figures
from potluck.cli.signals import on_sigterm
from potluck.core.config import SERVER_RUN_DIR, ServerConfig

HELP = """Serve one federated run: nodes dial in over gRPC with mutual TLS.

Make TLS material first (`potluck certs init`, `issue server --host ...`, `issue node ID`). Started again with the same --run-dir, the server resumes after the last committed round and nodes rejoin by themselves. Every option can be set in a TOML file (--config).

Example:

  potluck server --bind 0.0.0.0:7450 --tls-dir tls --rounds 50 --min-nodes 3 --allow site-a --allow site-b
"""


def _server(given: Given[ServerConfig]) -> None:
    out = CommandOutput("potluck.cli.server")
    port_file: Path | None = given.extras["port_file"]
    with failures_as_exit_codes(out.error):
        cfg = given.settings()
        cfg = cfg.replace(run_dir=cfg.run_dir or SERVER_RUN_DIR)
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
            out.result(f"potluck server: {last.round} rounds committed, {round_figures(last, ', ')}{eps}, "
                       f"model {result.final_params.digest}")
        if result.stopped:
            out.result(f"potluck server: stopped after round {last.round if last else 0}: {result.stopped}")


server = settings_command(ServerConfig, _server, [
    option("port_file", Optional[Path], None, "--port-file",
           help="Write the bound port here once listening (for --bind HOST:0)."),
])
