"""``potluck node``: join a server and train on local data when asked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.signals import on_sigterm

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
) -> None:
    def err(line: str) -> None:
        typer.echo(line, err=True)

    with failures_as_exit_codes(err):
        if insecure:
            err("potluck: WARNING: --insecure: updates travel in plaintext")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from potluck.apps.node import NodeAgent, NodeConfig

        agent = NodeAgent(NodeConfig(server_address, node_id, str(data_path), task=task, model_id=model_id,
                                     tls_dir=str(tls_dir), insecure=insecure))
        on_sigterm(agent.stop)
        try:
            agent.run()
        finally:
            agent.client.close()
        err(f"potluck node {node_id}: done after {agent.rounds_done} rounds")
