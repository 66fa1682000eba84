"""``potluck node``: join a server and train on local data when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.output import CommandOutput
from potluck.cli.signals import on_sigterm
from potluck.runtime.logcontext import set_process_log_fields

HELP = """Join a potluck server and train on local data when it asks.

Data never leaves this machine: only model updates are sent. The node dials out (works behind NAT), checks that the server trains the model its Task builds, and reconnects by itself if the server goes away.

Example:

  potluck node --server-address server.example:7450 --model-id digits --data-path /srv/data --node-id site-a
"""


def node(
    server_address: str = typer.Option(..., help="HOST:PORT of the server."),
    data_path: Path = typer.Option(..., help="This node's data: CSV, NPZ, IDX or an image folder."),
    node_id: str = typer.Option(..., help="This node's id; must be the CN of its certificate (tls/nodes/ID.crt)."),
    model_id: Optional[str] = typer.Option(None, help="The model this node expects to train; refused if the server trains another."),
    task: str = typer.Option("digits", help="The Task that builds the model: a built-in name or module:attribute."),
    tls_dir: Path = typer.Option(Path("tls"), help="Folder with ca.crt and nodes/ID.crt, nodes/ID.key."),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext; only with a server started with --insecure."),
    metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="Serve Prometheus metrics at http://HOST:PORT/metrics.  [default: off]"),
    metrics_host: str = typer.Option("127.0.0.1", help="Address the metrics endpoint listens on."),
    log_format: str = typer.Option("text", help="text, or json: one JSON object per line."),
    key_dir: Optional[Path] = typer.Option(None, help="Where this node's Ed25519 signing key (ID.signing.key, made on first start, mode 0600) and its ledger view live.  [default: TLS_DIR/nodes]"),
    no_bulk: bool = typer.Option(False, "--no-bulk", help="Move model payloads as gRPC chunks only, never over the server's bulk lane (a second port; by default used when the server announces one and it answers)."),
    max_backoff: float = typer.Option(30.0, min=0.1, help="Longest wait, seconds, between attempts to reach the server (exponential backoff with full jitter up to this)."),
    leave_on_ledger_mismatch: bool = typer.Option(False, "--leave-on-ledger-mismatch", help="Leave the run (exit 1) when the server's ledger forks, rewrites history or leaves out this node's update; otherwise it is logged at ERROR."),
) -> None:
    out = CommandOutput("potluck.cli.node")
    with failures_as_exit_codes(out.error):
        out.configure(log_format)
        set_process_log_fields(node_id=node_id)
        if insecure:
            out.warning("potluck: WARNING: --insecure: updates travel in plaintext")
        from potluck.apps.node import NodeAgent, NodeConfig

        agent = NodeAgent(NodeConfig(server_address, node_id, str(data_path), task=task, model_id=model_id,
                                     tls_dir=str(tls_dir), insecure=insecure, metrics_port=metrics_port,
                                     metrics_host=metrics_host, key_dir=str(key_dir) if key_dir else None,
                                     leave_on_ledger_mismatch=leave_on_ledger_mismatch, max_backoff=max_backoff,
                                     bulk=not no_bulk))
        on_sigterm(agent.stop)
        try:
            agent.run()
        finally:
            agent.client.close()
            set_process_log_fields(run_id=agent.run_id)
        out.info(f"potluck node {node_id}: done after {agent.rounds_done} rounds")
