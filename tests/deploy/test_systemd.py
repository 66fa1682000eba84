"""deploy/systemd: systemd itself accepts the units, their hardening scores well, and
the environment templates fill in every variable and flag the units use.

`systemd-analyze verify` runs against a test root laid out as docs/deployment.md says
(units in /etc/systemd/system, the potluck executable, env files, the potluck account
made by systemd-sysusers from our sysusers file). It exits 0 on unknown keys and bad
values, so any line on its stderr counts as a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from deploy_kit import DEPLOY, run, tool

from potluck.cli.main import app

SYSTEMD = DEPLOY / "systemd"
UNITS = ("potluck-server.service", "potluck-node.service")
ENV_FILES = {"potluck-server.service": "server.env", "potluck-node.service": "node.env"}
HOST_UNITS = Path("/usr/lib/systemd/system")


def make_root(tmp: Path) -> Path:
    """A filesystem root with the units installed and every path they name present."""
    root = tmp / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)  # targets the units order against
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, units / unit)
    exe = root / "opt/potluck/bin/potluck"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexec python3 -m potluck.cli \"$@\"\n")
    exe.chmod(0o755)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/kill", root / "bin/kill")  # the server unit's ExecReload (SIGHUP re-reads the CRL)
    for env in ENV_FILES.values():
        (root / "etc/potluck").mkdir(parents=True, exist_ok=True)
        shutil.copy(SYSTEMD / env, root / "etc/potluck" / env)
    for folder in ("etc/potluck/tls/nodes", "srv/potluck/data", "var/lib/potluck/tls", "usr/lib/sysusers.d"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(SYSTEMD / "potluck.sysusers", root / "usr/lib/sysusers.d/potluck.conf")
    run([tool("systemd-sysusers", "systemd"), f"--root={root}"])
    return root


@pytest.fixture
def root(tmp_path):
    tool("systemd-analyze", "systemd")
    if not (HOST_UNITS / "sysinit.target").exists():
        pytest.skip(f"no systemd unit library in {HOST_UNITS}")
    return make_root(tmp_path)


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return run([tool("systemd-analyze", "systemd"), "verify", f"--root={root}", *units], check=False)


def test_sysusers_creates_the_potluck_account(root):
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^potluck:x:\d+:\d+:.*:/var/lib/potluck:/usr/sbin/nologin$", passwd, re.M), passwd


def test_systemd_analyze_verify_accepts_both_units_without_a_word(root):
    done = verify(root, *UNITS)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stdout + done.stderr


def test_verify_would_report_an_unknown_key(root):
    """The check above is live: verify exits 0 on an unknown key but says so on stderr."""
    unit = root / "etc/systemd/system/potluck-node.service"
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nRestartt=always\n"))
    done = verify(root, "potluck-node.service")
    assert "Unknown key" in done.stderr and "Restartt" in done.stderr, done.stderr


def test_verify_would_report_a_missing_executable(root):
    (root / "opt/potluck/bin/potluck").unlink()
    done = verify(root, "potluck-server.service")
    assert done.returncode != 0 and "/opt/potluck/bin/potluck" in done.stderr, done.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_hardening_scores_ok(root, unit):
    """`systemd-analyze security` rates exposure 0 (best) to 10; 'OK' is below 2.5."""
    done = run([tool("systemd-analyze", "systemd"), "security", "--offline=yes", f"--root={root}",
                "--threshold=20", unit], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))
    assert level <= 2.0, done.stdout


def env_file(name: str) -> dict[str, str]:
    values = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def unit_settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNITS)
def test_hardening_and_restart_policy_are_set(unit):
    s = unit_settings(unit)
    for key, value in {"Restart": "on-failure", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "User": "potluck", "ProtectHome": "yes"}.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert s["EnvironmentFile"] == [f"/etc/potluck/{ENV_FILES[unit]}"]
    # The only writable paths: the service's own state directories (and its private /tmp).
    state = [f"/var/lib/{d}" for v in s["StateDirectory"] for d in v.split()]
    assert [p for v in s["ReadWritePaths"] for p in v.split()] == state


def test_signing_keys_are_kept_in_state_directories():
    """The server makes its ledger key in --tls-dir, a node its key in --key-dir: both
    must be writable (ProtectSystem=strict makes /etc read-only) and outlive restarts."""
    server = unit_settings("potluck-server.service")
    assert "--tls-dir /var/lib/potluck/tls " in server["ExecStart"][0]
    assert "potluck/tls" in server["StateDirectory"][0].split()
    node = unit_settings("potluck-node.service")
    assert "--key-dir /var/lib/potluck/node " in node["ExecStart"][0]
    assert node["StateDirectory"] == ["potluck/node"]


@pytest.mark.parametrize("unit", UNITS)
def test_env_template_defines_every_variable_and_flag_the_unit_uses(unit):
    command = unit_settings(unit)["ExecStart"][0]
    env = env_file(ENV_FILES[unit])
    used = set(re.findall(r"\$\{?([A-Z_]+)\}?", command))
    assert used <= set(env), f"{unit} uses {sorted(used - set(env))} that {ENV_FILES[unit]} does not set"
    words = command.split()
    subcommand = words[1]
    expanded = " ".join(env[w.strip("${}")] if w.startswith("$") else w for w in words[2:])
    flags = set(re.findall(r"(?<!\S)(--[a-z][a-z-]*)", expanded))
    cli = typer.main.get_command(app).commands[subcommand]  # the CLI's own options, in this process
    known = {option for param in cli.params for option in (*param.opts, *param.secondary_opts)}
    assert flags <= known, f"potluck {subcommand} has no {sorted(flags - known)}"
