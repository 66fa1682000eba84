"""``potluck dashboard``: serve a read-only web view of run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.core.errors import ConfigError

HELP = """A web page of run directories, read-only: the runs list, each run's metrics per round (updated live as rounds commit), and its ledger with the audit's verdict.

RUN_DIR is a run directory (the --run-dir of simulate, server or up; it may not exist yet) or a folder of them, rescanned as runs appear (default: runs). The page draws with uPlot, shipped inside potluck; it needs no internet access.

It binds 127.0.0.1:8050 by default. Any other address needs a token (--token, --token-file or POTLUCK_DASHBOARD_TOKEN): every request must carry it, and the page is opened as http://HOST:PORT/?token=TOKEN. It serves plain HTTP: off a trusted network, reach it through an SSH tunnel or a TLS proxy. Needs the dashboard extra: pip install 'potluck[dashboard]'.

Examples:

  potluck dashboard runs

  potluck dashboard runs/a runs/b --bind 127.0.0.1:9000

  potluck dashboard runs --bind 0.0.0.0:8050 --token-file ~/.potluck/dashboard.token
"""


def _err(line: str) -> None:
    typer.echo(line, err=True)


def dashboard(
    run_dirs: Optional[list[Path]] = typer.Argument(None, metavar="[RUN_DIR]...", show_default=False,
                                                    help="Run directories, or folders of them (default: runs)."),
    bind: str = typer.Option("127.0.0.1:8050", help="HOST:PORT to listen on (port 0: any free port). An address "
                                                    "other than loopback needs a token."),
    token: Optional[str] = typer.Option(None, envvar="POTLUCK_DASHBOARD_TOKEN", show_default=False,
                                        help="The token every request must carry (at least 16 characters)."),
    token_file: Optional[Path] = typer.Option(None, show_default=False,
                                              help="A file whose first line is the token."),
    poll: float = typer.Option(0.5, min=0.05, max=60.0, help="Seconds between looks at a watched run's metrics.jsonl."),
) -> None:
    with failures_as_exit_codes(_err):
        try:
            from potluck.dashboard.app import Settings
            from potluck.dashboard.auth import parse_bind, resolve_token
            from potluck.dashboard.server import serve
        except ImportError as exc:
            raise ConfigError(f"potluck dashboard needs Starlette and uvicorn ({exc}): "
                              "pip install 'potluck[dashboard]'") from exc
        address = parse_bind(bind)
        settings = Settings(sources=run_dirs or [], folders=[] if run_dirs else [Path("runs")],
                            token=resolve_token(token, token_file), poll_seconds=poll)
        serve(settings, address, lambda url: _err(f"potluck dashboard: serving {url} (Ctrl-C stops)"))
