"""``potluck check``: verify a run directory and print one line per finding."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from potluck.apps.check import check_run_dir
from potluck.cli.common import EXIT_FAILED, EXIT_USAGE, failures_as_exit_codes
from potluck.core.errors import RunDirError

HELP = """Verify that a run directory is consistent; it is only read, never changed.

Checks what a crash, a full disk or a stray edit could break: rounds 0 to k are committed with no gap; every checkpoint and strategy state exists, matches the SHA-256 its commit mark names and decodes as parameters; metrics.jsonl holds the record of each committed round and of no other; model.safetensors, if present, is the last round's model; the ledger entries in the commit marks chain and match their checkpoints, and ledger.jsonl holds exactly them (signatures and Merkle roots: `potluck ledger verify`).

Left behind by a stopped run, and harmless (`--resume` tidies them): temp files of a cut-off write, files of a round whose commit was cut short, a missing or torn last line of metrics.jsonl or ledger.jsonl. They are printed as notes.

Exit status: 0 when every invariant holds, 1 when one is broken, 2 when RUN_DIR is not a run directory.

Examples:

  potluck check runs/20250101-120000-digits

  potluck check runs/a --json
"""


def _err(line: str) -> None:
    typer.echo(line, err=True)


def check(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run directory: the --run-dir of simulate, server or up.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (level, code, message, path, round per finding)."),
) -> None:
    with failures_as_exit_codes(_err):
        try:
            report = check_run_dir(run_dir)
        except RunDirError as exc:  # only raised when run_dir is not a run directory
            _err(f"potluck: error: {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2))
        else:
            for finding in report.findings:
                typer.echo(f"{finding.level:<7} {finding.message}")
            typer.echo(report.summary())
        raise typer.Exit(0 if report.ok else EXIT_FAILED)
