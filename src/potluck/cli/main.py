"""The ``potluck`` command: one sub-command per module in this package.

Like ``python -m``, the command imports task and strategy modules (``--task
mytask:task``) from the current directory first, so a module beside the user needs no
``PYTHONPATH``. Exit codes: ``potluck.cli.common``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from potluck.apps.allocator import reuse_freed_memory
from potluck.cli import certs, check, dashboard, generate, ledger, node, peer, server, simulate, up
from potluck.cli.common import OneLineErrors

app = typer.Typer(
    name="potluck",
    help="Federated and decentralized model training: every node keeps its data, only updates travel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
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


def potluck_version() -> str:
    try:
        return version("potluck")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree not installed
        from potluck import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"potluck {potluck_version()}")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                            help="Print potluck's version and exit.")) -> None:
    """potluck: federated training on Linux. Start with `potluck simulate`."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --task mytask:task finds ./mytask.py, as `python -m` would
    reuse_freed_memory()  # every command moves model-sized buffers round after round


def main() -> None:
    app()
