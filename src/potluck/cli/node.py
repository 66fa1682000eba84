"""``potluck node``: join a server and train on local data when asked."""

from __future__ import annotations

from potluck.cli.common import failures_as_exit_codes
from potluck.cli.options import Given, settings_command
from potluck.cli.output import CommandOutput
from potluck.cli.signals import on_sigterm
from potluck.core.config import NodeConfig
from potluck.runtime.logcontext import set_process_log_fields

HELP = """Join a potluck server and train on local data when it asks.

Data never leaves this machine: only model updates are sent. The node dials out (works behind NAT), checks that the server trains the model its Task builds, and reconnects by itself if the server goes away.

Example:

  potluck node --server-address server.example:7450 --model-id digits --data-path /srv/data --node-id site-a
"""


def _node(given: Given[NodeConfig]) -> None:
    out = CommandOutput("potluck.cli.node")
    with failures_as_exit_codes(out.error):
        cfg = given.settings()
        out.configure(cfg.log_format)
        set_process_log_fields(node_id=cfg.node_id)
        if cfg.insecure:
            out.warning("potluck: WARNING: --insecure: updates travel in plaintext")
        from potluck.apps.node import NodeAgent

        agent = NodeAgent(cfg)
        on_sigterm(agent.stop)
        try:
            agent.run()
        finally:
            agent.client.close()
            set_process_log_fields(run_id=agent.run_id)
        out.info(f"potluck node {cfg.node_id}: done after {agent.rounds_done} rounds")


node = settings_command(NodeConfig, _node)
