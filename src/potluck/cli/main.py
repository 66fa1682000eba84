"""The ``potluck`` command: one sub-command per module in this package."""

from __future__ import annotations

import typer

from potluck.apps.allocator import reuse_freed_memory
from potluck.cli import certs, check, dashboard, generate, ledger, node, peer, server, simulate, up

app = typer.Typer(
    name="potluck",
    help="Federated and decentralized model training: every node keeps its data, only updates travel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("simulate", help=simulate.HELP)(simulate.simulate)
app.command("server", help=server.HELP)(server.server)
app.command("node", help=node.HELP)(node.node)
app.command("up", help=up.HELP)(up.up)
app.command("check", help=check.HELP)(check.check)
app.command("generate", help=generate.HELP)(generate.generate)
app.command("dashboard", help=dashboard.HELP)(dashboard.dashboard)
app.add_typer(certs.app, name="certs", help=certs.HELP)
app.add_typer(ledger.app, name="ledger", help=ledger.HELP)
app.add_typer(peer.app, name="peer", help=peer.HELP)


@app.callback()
def _root() -> None:
    """potluck: federated training on Linux. Start with `potluck simulate`."""
    reuse_freed_memory()  # every command moves model-sized buffers round after round


def main() -> None:
    app()
