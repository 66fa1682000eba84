"""``potluck certs``: make and inspect the TLS material for mutual TLS."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.transport import certs, revocation

HELP = """Make the TLS material for a deployment: a project CA, a server certificate, one per node.

Every connection is mutual TLS: nodes trust the server through the CA, and the server knows each node by the CN of its certificate (the node id). Keep ca.key with whoever issues certificates; give each node only ca.crt and its own nodes/<id>.crt and .key.

Example:

  potluck certs init

  potluck certs issue server --host fl.example.org --host 10.0.0.5

  potluck certs issue node hospital-a

  potluck certs show

  potluck certs revoke hospital-b
"""

app = typer.Typer(help=HELP, no_args_is_help=True)
issue_app = typer.Typer(help="Issue a server or node certificate signed by the project CA.", no_args_is_help=True)
app.add_typer(issue_app, name="issue")


def _err(line: str) -> None:
    typer.echo(line, err=True)


def _tls_dir() -> Path:
    return typer.Option(Path("tls"), "--tls-dir", help="Directory holding the TLS material.")  # type: ignore[no-any-return]


@app.command("init", help="""Create the project CA (ca.crt, ca.key).

Refuses to replace an existing CA unless --force: certificates issued by the old CA stop working.

Example:

  potluck certs init --name "acme federation CA" --tls-dir /etc/potluck/tls
""")
def init(
    tls_dir: Path = _tls_dir(),
    name: str = typer.Option("potluck project CA", "--name", help="The CA's common name."),
    days: int = typer.Option(3650, "--days", help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
) -> None:
    with failures_as_exit_codes(_err):
        info = certs.init_ca(tls_dir, name=name, days=days, force=force)
        typer.echo(f"wrote {tls_dir / 'ca.crt'} and {tls_dir / 'ca.key'} (private: keep it off the nodes)")
        _print_info(info)
        typer.echo(f"next: potluck certs issue server --host HOST --tls-dir {tls_dir}")


@issue_app.command("server", help="""Issue server.crt and server.key for the names and IPs nodes dial.

Each --host becomes a subject alternative name: DNS names as DNS, IP literals as IP. Nodes must connect with one of them exactly.

Example:

  potluck certs issue server --host localhost --host 127.0.0.1
""")
def issue_server(
    host: list[str] = typer.Option(..., "--host", metavar="NAME", help="A DNS name or IP address of the server (repeatable)."),
    tls_dir: Path = _tls_dir(),
    days: int = typer.Option(825, "--days", help="Validity in days."),
) -> None:
    with failures_as_exit_codes(_err):
        info = certs.issue_server(tls_dir, host, days=days)
        typer.echo(f"wrote {tls_dir / 'server.crt'} and {tls_dir / 'server.key'}")
        _print_info(info)


@issue_app.command("node", help=f"""Issue nodes/NODE_ID.crt and .key: the node's identity is its CN.

A node id is {certs.NODE_ID_RULE}. Copy ca.crt and the two node files to the node.

Example:

  potluck certs issue node hospital-a
""")
def issue_node(
    node_id: str = typer.Argument(..., metavar="NODE_ID", help="The node's id, e.g. hospital-a."),
    tls_dir: Path = _tls_dir(),
    days: int = typer.Option(825, "--days", help="Validity in days."),
) -> None:
    with failures_as_exit_codes(_err):
        info = certs.issue_node(tls_dir, node_id, days=days)
        typer.echo(f"wrote {info.path} and {info.path.with_suffix('.key')}")
        _print_info(info)


@app.command("revoke", help="""Revoke a node's certificate: add it to crl.pem, signed by the project CA.

A running server re-reads crl.pem when it changes (and on SIGHUP) and refuses every later call of that certificate, on gRPC and on the bulk lane. Revokes nodes/NODE_ID.crt, or the file --cert names (e.g. a copy of an older certificate). To let the node back in, issue it a new certificate.

Example:

  potluck certs revoke hospital-b

  potluck certs issue node hospital-b
""")
def revoke(
    node_id: str = typer.Argument(..., metavar="NODE_ID", help="The node whose certificate to revoke."),
    cert: Optional[Path] = typer.Option(None, "--cert", metavar="PATH",
                                        help="The certificate to revoke (default: nodes/NODE_ID.crt)."),
    tls_dir: Path = _tls_dir(),
) -> None:
    with failures_as_exit_codes(_err):
        done = revocation.revoke_node(tls_dir, node_id, cert_path=cert)
        what = "was already revoked" if done.already else "revoked"
        typer.echo(f"node {node_id}: certificate serial {done.serial:x} {what}; {done.crl_path} lists {done.listed}")
        if not done.already:
            typer.echo("running servers refuse it from their next call (they re-read the file when it changes, "
                       "and on SIGHUP)")
        typer.echo(f"next: potluck certs issue node {node_id} --tls-dir {tls_dir}  (a new certificate for the node)")


@app.command("show", help="""Show certificates: subject, issuer, SHA-256 fingerprint, validity, SANs.

Without paths, shows every .crt in --tls-dir and its nodes/ folder. Certificates on --tls-dir's crl.pem are marked REVOKED.

Example:

  potluck certs show tls/server.crt
""")
def show(
    paths: Optional[list[Path]] = typer.Argument(None, metavar="[PATH]...", help="Certificate files (PEM)."),
    tls_dir: Path = _tls_dir(),
) -> None:
    with failures_as_exit_codes(_err):
        files = paths or certs.find_certificates(tls_dir)
        if not files:
            raise certs.CertificateError(f"no certificates in {tls_dir}: run `potluck certs init --tls-dir {tls_dir}` first")
        revoked = revocation.revoked_serials(tls_dir) if (tls_dir / "ca.crt").is_file() else frozenset()
        for i, path in enumerate(files):
            if i:
                typer.echo("")
            typer.echo(str(path))
            _print_info(certs.describe(path), revoked)


def _print_info(info: certs.CertInfo, revoked: frozenset[int] = frozenset()) -> None:
    now = datetime.now(timezone.utc)
    state = " (EXPIRED)" if now > info.not_after else " (not yet valid)" if now < info.not_before else ""
    state += " (REVOKED: on crl.pem)" if info.serial in revoked and not info.is_ca else ""
    rows = [
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("sha256", info.fingerprint),
        ("serial", f"{info.serial:x}"),
        ("not before", f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC"),
        ("not after", f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC{state}"),
        ("SANs", ", ".join(info.sans) or "-"),
        ("CA", "yes" if info.is_ca else "no"),
    ]
    for label, value in rows:
        typer.echo(f"  {label:<11}{value}")
