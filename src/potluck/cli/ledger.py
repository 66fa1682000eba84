"""``potluck ledger``: verify, show and account for a run's provenance ledger; export and
check inclusion proofs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import EXIT_FAILED, EXIT_USAGE, failures_as_exit_codes
from potluck.core.errors import ConfigError, RunDirError

HELP = """The run's provenance ledger (RUN_DIR/ledger.jsonl): a signed, hash-chained entry per committed round.

Examples:

  potluck ledger verify runs/a

  potluck ledger show runs/a

  potluck ledger contributions runs/a --format csv

  potluck ledger proof runs/a --node hospital-a --round 7 > proof.json

  potluck ledger check-proof proof.json --server-key 3b6a27bc…
"""

app = typer.Typer(no_args_is_help=True, add_completion=False)
RUN_DIR = typer.Argument(..., metavar="RUN_DIR", help="The run directory (--run-dir of simulate, server or up).",
                         show_default=False)


def _err(line: str) -> None:
    typer.echo(line, err=True)


def _check_hex(flag: str, value: str | None, what: str) -> None:
    """ConfigError unless ``value`` (when given) is 64 hex digits: a 32-byte key or hash."""
    if value is None:
        return
    if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ConfigError(f"{flag} must be {what}: 64 hex digits as `potluck ledger show` prints it, got "
                          f"{value[:70]!r} ({len(value)} characters)")


@app.command("verify")
def verify(
    run_dir: Path = RUN_DIR,
    server_key: Optional[str] = typer.Option(None, help="Hex Ed25519 key the server must have signed with (pin it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Recompute the chain, every signature, every Merkle root and the checkpoints' digests.

    Names the first entry that fails and why. Exit status: 0 when the ledger verifies, 1 when it does not, 2 when RUN_DIR is not a run directory.
    """
    with failures_as_exit_codes(_err):
        from potluck.ledger.queries import audit_ledger

        try:
            audit = audit_ledger(run_dir, server_key=server_key)
        except RunDirError as exc:
            _err(f"potluck: error: {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        if as_json:
            typer.echo(json.dumps({"run_dir": str(audit.run_dir), "ok": audit.ok, "entries": len(audit.entries),
                                   "head": audit.head, "notes": audit.notes,
                                   "problems": [{"entry": p.entry, "message": p.message} for p in audit.problems]},
                                  indent=2))
        else:
            for note in audit.notes:
                typer.echo(f"note    {note}")
            for problem in audit.problems:
                typer.echo(f"broken  {problem}")
            typer.echo(audit.summary())
        raise typer.Exit(0 if audit.ok else EXIT_FAILED)


@app.command("show")
def show(
    run_dir: Path = RUN_DIR,
    as_json: bool = typer.Option(False, "--json", help="Every entry's figures as JSON, participants in full."),
) -> None:
    """The run's history: how it started, then per round the participants, model and ε."""
    with failures_as_exit_codes(_err):
        from potluck.ledger.queries import history, read_entries

        entries = read_entries(run_dir)
        rows = history(entries)
        if as_json:
            typer.echo(json.dumps([row.__dict__ for row in rows], indent=2, default=list))
            return
        if entries:
            first = entries[0]
            strategy = first.get("strategy") or {}
            typer.echo(f"run {first.get('run_id')}  task {first.get('task')}  strategy {strategy.get('name')} "
                       f"{strategy.get('options') or ''}".rstrip())
            typer.echo(f"started {first.get('time')}  server key {first.get('server_key')}"
                       + ("  (simulation: keys derived from the seed)" if first.get("simulation") else ""))
        typer.echo(f"{'round':>5}  {'committed':<25}  {'model':<16}  {'nodes':>5}  {'examples':>8}  {'ε':>8}  "
                   "participants / absent")
        for row in rows:
            eps = "-" if row.epsilon is None else f"{row.epsilon:.3f}"
            shown = ", ".join(row.participants[:6]) + (f", … (+{len(row.participants) - 6})"
                                                        if len(row.participants) > 6 else "")
            absent = "; absent: " + ", ".join(f"{n} ({r})" for n, r in row.absent[:6]) if row.absent else ""
            what = "run started" if row.round == 0 else shown + absent
            typer.echo(f"{row.round:>5}  {row.time:<25}  {row.model_digest[:16]:<16}  "
                       f"{len(row.participants) if row.round else '-':>5}  {row.examples if row.round else '-':>8}  "
                       f"{eps:>8}  {what}")


@app.command("contributions")
def contributions(
    run_dir: Path = RUN_DIR,
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
) -> None:
    """Per node: rounds participated, examples contributed, updates rejected (and otherwise left out)."""
    with failures_as_exit_codes(_err):
        if fmt not in ("table", "csv", "json"):
            raise ConfigError(f"--format must be table, csv or json, got {fmt!r}")
        from potluck.ledger.queries import accounts, read_entries

        rows = accounts(read_entries(run_dir))
        columns = ["node", "rounds", "examples", "rejected", "failed", "timed_out", "left", "discarded",
                   "first_round", "last_round"]
        if fmt == "json":
            typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
        elif fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if getattr(row, c) is None else getattr(row, c) for c in columns])
            typer.echo(out.getvalue(), nl=False)
        else:
            typer.echo("  ".join(f"{c:>10}" if c != "node" else f"{c:<16}" for c in columns))
            for row in rows:
                cells = ["-" if getattr(row, c) is None else str(getattr(row, c)) for c in columns]
                typer.echo("  ".join(f"{v:>10}" if c != "node" else f"{v:<16}" for c, v in zip(columns, cells)))


@app.command("proof")
def proof(
    run_dir: Path = RUN_DIR,
    node: str = typer.Option(..., "--node", help="The node id."),
    rnd: int = typer.Option(..., "--round", help="The round."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the proof here instead of stdout."),
) -> None:
    """An inclusion proof of NODE's contribution in ROUND, as JSON.

    The document holds the round's signed header, the contribution (the leaf) and the Merkle path; check it with `potluck ledger check-proof`, without the run directory.
    """
    with failures_as_exit_codes(_err):
        from potluck.ledger.queries import export_proof, read_entries

        if rnd == 0:
            raise ConfigError("--round 0 is the run's start entry, which holds no contributions: a proof is of a "
                              "node's update in a round from 1 (`potluck ledger show` lists them)")
        text = json.dumps(export_proof(read_entries(run_dir), node, rnd), indent=2) + "\n"
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text)


@app.command("check-proof")
def check_proof(
    proof_file: Path = typer.Argument(..., metavar="PROOF", help="A file written by `potluck ledger proof` (- : stdin)."),
    server_key: Optional[str] = typer.Option(None, help="Hex key the server signs with, as you know it (pin)."),
    entry: Optional[str] = typer.Option(None, help="Hash of the round's entry as you know it (e.g. a head you saw)."),
    root: Optional[str] = typer.Option(None, help="The round's Merkle root as you know it."),
) -> None:
    """Check an inclusion proof without the run directory.

    Checks the header's hash and the server's signature, the Merkle path to the round's root, and the node's signature. Pass what you know independently (--server-key, --entry, --root) to check against it rather than the document's own values. Exit status 0 when the proof holds, 1 when it does not.
    """
    with failures_as_exit_codes(_err):
        from potluck.ledger.queries import check_proof as check

        for flag, value, what in (("--server-key", server_key, "the server's Ed25519 public key"),
                                  ("--entry", entry, "the entry's SHA-256"), ("--root", root, "the Merkle root")):
            _check_hex(flag, value, what)
        raw = typer.get_text_stream("stdin").read() if str(proof_file) == "-" else proof_file.read_text()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{proof_file} is not JSON: {exc}") from None
        result = check(doc if isinstance(doc, dict) else {}, server_key=server_key, entry=entry, root=root)
        for line in result.lines:
            typer.echo(line)
        typer.echo("the proof holds" if result.ok else "the proof does NOT hold")
        raise typer.Exit(0 if result.ok else EXIT_FAILED)
