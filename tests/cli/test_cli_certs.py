"""`potluck certs` as a user runs it: exit codes, one-line errors, what `show` prints."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.transport import certs

runner = CliRunner()


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["certs", *args])


def make_all(tls: Path) -> None:
    for args in (["init"], ["issue", "server", "--host", "localhost", "--host", "127.0.0.1"], ["issue", "node", "n1"]):
        result = run(*args, "--tls-dir", str(tls))
        assert result.exit_code == 0, result.output


def test_init_issue_show(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    make_all(tls)
    assert (tls / "nodes" / "n1.key").stat().st_mode & 0o777 == 0o600
    result = run("show", "--tls-dir", str(tls))
    assert result.exit_code == 0, result.output
    out = result.output
    for path in ["ca.crt", "server.crt", "nodes/n1.crt"]:
        info = certs.describe(tls / path)
        assert str(tls / path) in out and info.fingerprint in out
        assert f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC" in out
    assert "CN=potluck project CA" in out and "CN=n1" in out
    assert "DNS:localhost, IP:127.0.0.1" in out and "DNS:n1" in out
    assert out.index("ca.crt") < out.index("server.crt") < out.index("n1.crt")


def test_show_given_paths(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    make_all(tls)
    result = run("show", str(tls / "server.crt"))
    assert result.exit_code == 0 and "CN=localhost" in result.output and "ca.crt" not in result.output
    result = run("show", str(tmp_path / "nope.crt"))
    assert result.exit_code == 1 and "potluck: error: cannot read" in result.output
    result = run("show", "--tls-dir", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no certificates in" in result.output


def test_init_refuses_overwrite_without_force(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    assert run("init", "--tls-dir", str(tls)).exit_code == 0
    before = (tls / "ca.crt").read_bytes()
    result = run("init", "--tls-dir", str(tls))
    assert result.exit_code == 1 and "a CA already exists" in result.output and "--force" in result.output
    assert "Traceback" not in result.output and (tls / "ca.crt").read_bytes() == before
    result = run("init", "--tls-dir", str(tls), "--force", "--name", "new CA", "--days", "30")
    assert result.exit_code == 0 and "CN=new CA" in result.output


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    make_all(tls)
    result = run("issue", "node", ".hidden", "--tls-dir", str(tls))
    assert result.exit_code == 2 and "invalid node id '.hidden'" in result.output
    result = run("issue", "server", "--host", "not a host", "--tls-dir", str(tls))
    assert result.exit_code == 2 and "invalid host 'not a host'" in result.output
    assert run("issue", "server", "--tls-dir", str(tls)).exit_code == 2  # --host is required
    assert run("init", "--tls-dir", str(tmp_path / "x"), "--days", "0").exit_code == 2


def test_issue_without_ca_says_what_to_run(tmp_path: Path) -> None:
    result = run("issue", "node", "n1", "--tls-dir", str(tmp_path))
    assert result.exit_code == 1 and "run `potluck certs init" in result.output


def test_help_has_examples() -> None:
    for args in (["--help"], ["init", "--help"], ["issue", "server", "--help"], ["issue", "node", "--help"],
                 ["show", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Example" in result.output and "potluck certs" in result.output
